"""The feed tables in Iceberg: schema, partition spec, creation, and their Parquet files.

Each feed is one table with the Hive layout's columns (:mod:`harvester.schemas`), in the
same order, with field ids ``1..n`` in that order: a feed's columns never change order,
so the ids are stable. ``timestamp`` is a required ``timestamptz`` (microseconds); the
table is partitioned by ``day(timestamp)`` (hidden partitioning: no ``dt`` column).

Data files are written by us, not by pyiceberg, so they can be streamed: a
:class:`DataFileWriter` appends record batches (``timestamp[s]`` cast exactly to
``timestamp[us, UTC]``, field ids in the Parquet schema) to one file, one UTC day per
file, holding one row group at a time in memory. :func:`data_file_key` and
:func:`data_file_path` name a new file under the table's ``data/`` folder, where pyiceberg
would put it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import CatalogError, ConfigError, StorageError
from harvester.schemas import BIGINT, FEEDS, INT, STR, TIMESTAMP, Feed

if TYPE_CHECKING:
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

    from harvester.iceberg.catalog import IcebergLake

ICEBERG_TIMESTAMP = pa.timestamp("us", tz="UTC")
PARTITION_FIELD = "timestamp_day"
PARTITION_FIELD_ID = 1000
COMPRESSION = "zstd"
ROW_GROUP_ROWS = 128 * 1024
READ_BATCH_ROWS = 16 * 1024
"""Rows per batch when streaming a file: a batch is cut from one decoded row group (a
larger one would be stitched from two, and hold both)."""
FIELD_ID = b"PARQUET:field_id"
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": COMPRESSION,
    # Copy-on-write only: we never write delete files, and refuse tables that have them.
    "write.delete.mode": "copy-on-write",
    "write.update.mode": "copy-on-write",
}


def _feed(name: str) -> Feed:
    try:
        return FEEDS[name]
    except KeyError:
        raise ConfigError(f"unknown feed {name!r}; use one of {', '.join(FEEDS)}") from None


@cache
def iceberg_schema(feed: str) -> Schema:
    """The Iceberg schema of ``feed``: its lake columns, ids ``1..n`` in column order."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import (
        IcebergType,
        IntegerType,
        LongType,
        NestedField,
        StringType,
        TimestamptzType,
    )

    kinds: dict[pa.DataType, IcebergType] = {
        TIMESTAMP: TimestamptzType(),
        INT: IntegerType(),
        BIGINT: LongType(),
        STR: StringType(),
    }
    fields = [
        NestedField(
            field_id=number,
            name=column.name,
            field_type=kinds[column.type],
            required=column.name == "timestamp",
        )
        for number, column in enumerate(_feed(feed).schema, start=1)
    ]
    return Schema(*fields)


@cache
def partition_spec(feed: str) -> PartitionSpec:
    """``day(timestamp)``, the same for every feed."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform

    timestamp = iceberg_schema(feed).find_field("timestamp")
    return PartitionSpec(
        PartitionField(
            source_id=timestamp.field_id,
            field_id=PARTITION_FIELD_ID,
            transform=DayTransform(),
            name=PARTITION_FIELD,
        )
    )


@cache
def iceberg_arrow_schema(feed: str) -> pa.Schema:
    """The Arrow schema of ``feed``'s Iceberg data files: field ids, microsecond stamps."""
    fields = []
    for number, column in enumerate(_feed(feed).schema, start=1):
        kind = ICEBERG_TIMESTAMP if column.type == TIMESTAMP else column.type
        fields.append(
            pa.field(
                column.name,
                kind,
                nullable=column.name != "timestamp",
                metadata={FIELD_ID: str(number).encode()},
            )
        )
    return pa.schema(fields)


def to_iceberg_arrow(table: pa.Table, feed: str) -> pa.Table:
    """``table`` (the lake's Arrow form of ``feed``) in the Iceberg files' schema.

    The cast from seconds to microseconds is exact; a null timestamp, which
    :func:`harvester.schemas.items_to_table` never makes, is refused by the cast.
    """
    return table.cast(iceberg_arrow_schema(feed))


def data_file_key(feed: str, day: date, *, prefix: str = "h") -> str:
    """A new, unique key (relative to the lake root) for a data file of ``feed`` on ``day``.

    Unique on purpose: a file a snapshot references is never overwritten, so a replay
    after a crash writes new files and the replacement drops the old ones. The key is
    what a :class:`~harvester.storage.Store` commits to; ``{root}/{key}`` is the path the
    commit is given.
    """
    return f"{feed}/data/{PARTITION_FIELD}={day.isoformat()}/{prefix}-{uuid.uuid4().hex}.parquet"


def data_file_path(location: str, day: date, *, prefix: str = "h") -> str:
    """A new, unique full path for a data file of ``day`` under the table at ``location``."""
    base, _, feed = location.rstrip("/").rpartition("/")
    return f"{base}/{data_file_key(feed, day, prefix=prefix)}"


class DataFileWriter:
    """Streams record batches of one feed and one UTC day into one Parquet data file.

    ``sink`` is a local path or an open Arrow output stream (e.g. a pyiceberg
    ``OutputFile.create()``). Rows are buffered up to ``row_group_rows`` and written as a
    row group, so memory stays at about one row group whatever the file holds. Use as a
    context manager; :attr:`rows` counts what was written. ``schema`` (default the feed's
    Iceberg schema) is for rewriting a file in the schema it has.
    """

    def __init__(
        self,
        sink: Any,
        feed: str,
        *,
        row_group_rows: int = ROW_GROUP_ROWS,
        schema: pa.Schema | None = None,
    ) -> None:
        self.feed = feed
        self.schema = schema or iceberg_arrow_schema(feed)
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(sink, self.schema, compression=COMPRESSION)

    def __enter__(self) -> DataFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Append rows: in the lake's schema of the feed, or already in the Iceberg one."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if table.schema != self.schema:
            table = to_iceberg_arrow(table, self.feed)
        if not table.num_rows:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            tables, self._pending, self._pending_rows = self._pending, [], 0
            self._writer.write_table(pa.concat_tables(tables), self.row_group_rows)

    def close(self) -> None:
        """Write what is buffered and the footer."""
        self._flush()
        self._writer.close()


def table_is_ours(table: Table, feed: str) -> bool:
    """Whether ``table`` has ``feed``'s schema (names, ids, types) and partition spec."""
    return bool(
        table.schema().as_struct() == iceberg_schema(feed).as_struct()
        and table.spec().fields == partition_spec(feed).fields
    )


def ensure_table(lake: IcebergLake, feed: str) -> Table:
    """Load ``{namespace}.{feed}``, creating the namespace and the table if missing.

    Several shards may create it at once: whoever loses the race loads the winner's. An
    existing table must have our schema and partition spec, else :class:`ConfigError`
    (nothing is changed). The name mapping is stored as a table property, so readers
    that meet a file without field ids can still resolve its columns by name.
    """
    from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

    identifier = lake.identifier(feed)
    with catalog_errors(f"table {'.'.join(identifier)} in {lake.described}"):
        try:
            table = lake.catalog.load_table(identifier)
        except NoSuchTableError:
            _ensure_namespace(lake)
            schema = iceberg_schema(feed)
            try:
                table = lake.catalog.create_table(
                    identifier,
                    schema=schema,
                    location=lake.location(feed),
                    partition_spec=partition_spec(feed),
                    properties={
                        **TABLE_PROPERTIES,
                        "schema.name-mapping.default": schema.name_mapping.model_dump_json(),
                    },
                )
            except TableAlreadyExistsError:
                table = lake.catalog.load_table(identifier)
    if not table_is_ours(table, feed):
        raise ConfigError(
            f"table {'.'.join(identifier)} exists in {lake.described} with another schema "
            "or partitioning; use another --namespace, or drop that table"
        )
    if table.location().rstrip("/") != lake.location(feed):
        raise ConfigError(
            f"table {'.'.join(identifier)} lives at {table.location()}, not under --out "
            f"({lake.location(feed)}); use the --out it was made with, or another --namespace"
        )
    return table


def _ensure_namespace(lake: IcebergLake) -> None:
    """Create the namespace unless it exists; another shard may be creating it right now.

    pyiceberg's SQL catalog reports that race as SQLAlchemy's ``IntegrityError`` (a
    duplicate key), not as ``NamespaceAlreadyExistsError``: both mean "it exists now",
    which is checked before going on.
    """
    from pyiceberg.exceptions import NamespaceAlreadyExistsError
    from sqlalchemy.exc import IntegrityError

    try:
        lake.catalog.create_namespace_if_not_exists(lake.namespace)
    except (NamespaceAlreadyExistsError, IntegrityError):
        if not lake.catalog.namespace_exists(lake.namespace):
            raise


def load_table(lake: IcebergLake, feed: str) -> Table | None:
    """``{namespace}.{feed}``, or None if the catalog has no such table (read-only)."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    identifier = lake.identifier(feed)
    with catalog_errors(f"table {'.'.join(identifier)} in {lake.described}"):
        try:
            return lake.catalog.load_table(identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None


@contextmanager
def catalog_errors(
    what: str, *, passthrough: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Map the catalog's and the file IO's errors (SQL, REST, Glue, S3, disk) to ours.

    Exceptions in ``passthrough`` are raised as they are, for the caller to handle.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    from pyiceberg.exceptions import (
        ForbiddenError,
        RESTError,
        UnauthorizedError,
    )
    from sqlalchemy.exc import SQLAlchemyError

    from harvester.errors import StorageAccessError

    try:
        yield
    except passthrough:
        raise
    except (UnauthorizedError, ForbiddenError, NoCredentialsError, PermissionError) as exc:
        raise StorageAccessError(f"{what}: access refused ({exc}); check the credentials") from exc
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException"):
            raise StorageAccessError(
                f"{what}: access refused ({code}); check the IAM policy"
            ) from exc
        raise CatalogError(f"{what}: {exc}") from exc
    except (SQLAlchemyError, RESTError, BotoCoreError) as exc:
        raise CatalogError(f"{what}: {exc}") from exc
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror or exc}") from exc
