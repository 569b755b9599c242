"""``harvester ddl``: the SQL that exposes the lake as tables, for Athena or DuckDB.

Athena: one ``CREATE EXTERNAL TABLE`` per feed over ``s3://.../{feed}/``, partitioned
by the Hive column ``dt`` (a ``YYYY-MM-DD`` string in the path) with partition
projection, so a new day is queryable the moment its file lands and nobody runs
``MSCK REPAIR TABLE``. Column types come from :mod:`harvester.schemas`.

DuckDB: one ``CREATE OR REPLACE VIEW`` per feed over ``read_parquet`` of the feed's
files, with ``dt`` read as a ``DATE``.

The Athena tables are described once, as data: :func:`table_specs` gives one
:class:`TableSpec` per feed (columns, partition keys, location, properties, storage
format), and both the DDL here and the Glue ``TableInput`` of :mod:`harvester.glue` are
rendered from it, so ``harvester ddl`` and ``harvester catalog`` cannot drift apart.

Everything here is pure: the SQL depends on the arguments only, never on what the lake
holds at the moment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa

from harvester.errors import ConfigError
from harvester.schemas import FEEDS

ENGINES = ("athena", "duckdb")
PARTITION = "dt"
DEFAULT_DATABASE = "threatgrid"
DEFAULT_SINCE = "2013-01-01"  # before Threat Grid's first record: projection finds every day

_ATHENA_NAME = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Hive DDL escapes string literals with backslashes, which we would rather never need.
_UNSAFE_IN_LITERAL = re.compile(r"['\\\x00-\x1f]|\$\{")


@dataclass(frozen=True, kw_only=True)
class StorageFormat:
    """How a table's files are stored, in the words of DDL and of the Hive metastore."""

    ddl: str  # what follows STORED AS
    serde: str
    input_format: str
    output_format: str
    classification: str  # the Glue ``classification`` parameter

    def __post_init__(self) -> None:
        if not all((self.ddl, self.serde, self.input_format, self.output_format)):
            raise ValueError("a storage format needs its DDL name, SerDe and formats")


PARQUET = StorageFormat(
    ddl="PARQUET",
    serde="org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
    input_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    output_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    classification="parquet",
)


@dataclass(frozen=True, kw_only=True)
class Column:
    """A column as Athena and Glue declare it: a name and a Hive type."""

    name: str
    type: str

    def __post_init__(self) -> None:
        if not self.name or not self.type:
            raise ValueError(f"a column needs a name and a type, not {self!r}")


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """One feed's external table over the lake: what Athena's DDL and Glue's TableInput say.

    ``properties`` are the table properties in the order the DDL prints them
    (partition projection and its location template).
    """

    database: str
    name: str
    columns: tuple[Column, ...]
    partition_keys: tuple[Column, ...]
    location: str
    properties: Mapping[str, str]
    format: StorageFormat = PARQUET

    def __post_init__(self) -> None:
        if not _ATHENA_NAME.match(self.database) or not _ATHENA_NAME.match(self.name):
            raise ValueError(f"not Athena names: {self.database!r}.{self.name!r}")
        if not self.location.startswith("s3://") or not self.location.endswith("/"):
            raise ValueError(f"a table location is an s3:// folder, not {self.location!r}")
        names = [c.name for c in (*self.columns, *self.partition_keys)]
        if not self.columns or len(set(names)) != len(names):
            raise ValueError(f"table {self.name!r} needs distinct columns, not {names}")


def table_specs(
    out: str, *, database: str = DEFAULT_DATABASE, since: str = DEFAULT_SINCE
) -> tuple[TableSpec, ...]:
    """One :class:`TableSpec` per feed, in feed order, for the s3:// lake at ``out``.

    Bad input (a local ``out``, a database Athena cannot name, a ``since`` that is not a
    date) raises :class:`~harvester.errors.ConfigError`.
    """
    root = s3_root(out)
    db = valid_database(database)
    if not _DAY.match(since) or not _is_date(since):
        raise ConfigError(f"--since {since!r} is not a date; use YYYY-MM-DD, e.g. {DEFAULT_SINCE}")
    specs = []
    for name, feed in FEEDS.items():
        location = f"{root}{name}/"
        specs.append(
            TableSpec(
                database=db,
                name=name,
                columns=tuple(Column(name=f.name, type=athena_type(f.type)) for f in feed.schema),
                partition_keys=(Column(name=PARTITION, type="string"),),
                location=location,
                properties={
                    "projection.enabled": "true",
                    f"projection.{PARTITION}.type": "date",
                    f"projection.{PARTITION}.format": "yyyy-MM-dd",
                    f"projection.{PARTITION}.range": f"{since},NOW",
                    f"projection.{PARTITION}.interval": "1",
                    f"projection.{PARTITION}.interval.unit": "DAYS",
                    "storage.location.template": f"{location}{PARTITION}=${{{PARTITION}}}/",
                },
            )
        )
    return tuple(specs)


def valid_database(name: str, *, flag: str = "--database") -> str:
    """``name`` lower-cased (Athena and Glue lower-case names themselves), if Athena allows it.

    ``flag`` names the option in the error, a :class:`~harvester.errors.ConfigError`.
    """
    if not _ATHENA_NAME.match(name):
        raise ConfigError(f"{flag} {name!r} is not a valid Athena name; use letters, digits and _")
    return name.lower()


def render_ddl(
    out: str, *, engine: str, database: str = DEFAULT_DATABASE, since: str = DEFAULT_SINCE
) -> str:
    """The statements that create ``engine``'s tables (Athena) or views (DuckDB) over ``out``.

    ``database`` and ``since`` (the first ``dt`` of Athena's partition projection) are
    used by Athena only. Bad input raises :class:`~harvester.errors.ConfigError`.
    """
    if engine == "athena":
        return athena_ddl(out, database=database, since=since)
    if engine == "duckdb":
        return duckdb_ddl(out)
    raise ConfigError(f"--engine {engine!r} is not known; use one of {', '.join(ENGINES)}")


def athena_type(kind: pa.DataType) -> str:
    """The Athena (Hive DDL) type of a column of Arrow type ``kind``.

    Any timestamp unit maps to ``timestamp``: Parquet has no seconds unit, so files
    written from ``timestamp[s]`` hold milliseconds.
    """
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_int32(kind):
        return "int"
    if pa.types.is_int64(kind):
        return "bigint"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    raise ValueError(f"no Athena type for Arrow type {kind}")


def athena_ddl(out: str, *, database: str = DEFAULT_DATABASE, since: str = DEFAULT_SINCE) -> str:
    """``CREATE DATABASE`` and one ``CREATE EXTERNAL TABLE`` per feed, for an s3:// lake."""
    root = s3_root(out)
    specs = table_specs(out, database=database, since=since)
    db = _athena_id(specs[0].database)  # lower-cased: Athena does it itself; say so in the DDL
    parts = [
        f"-- Athena tables for the Threat Grid lake at {root}",
        "-- Generated by `harvester ddl --engine athena`. Athena runs one statement per query:",
        "-- run these one at a time. Partition projection on dt makes each new day",
        "-- queryable at once, so MSCK REPAIR TABLE is never needed. Filter on dt to prune:",
        f"--   SELECT count(*) FROM {db}.`ips` WHERE dt BETWEEN '2024-01-01' AND '2024-01-31';",
        "",
        f"CREATE DATABASE IF NOT EXISTS {db};",
    ]
    for spec in specs:
        parts += ["", create_table(spec)]
    return "\n".join(parts)


def create_table(spec: TableSpec) -> str:
    """The ``CREATE EXTERNAL TABLE IF NOT EXISTS`` statement of one table."""
    columns = ",\n".join(f"  {_athena_id(c.name)} {c.type}" for c in spec.columns)
    partitions = ", ".join(f"{_athena_id(c.name)} {c.type}" for c in spec.partition_keys)
    properties = ",\n".join(f"  '{k}'='{v}'" for k, v in spec.properties.items())
    return "\n".join(
        [
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {_athena_id(spec.database)}"
            f".{_athena_id(spec.name)} (",
            columns,
            ")",
            f"PARTITIONED BY ({partitions})",
            f"STORED AS {spec.format.ddl}",
            f"LOCATION '{spec.location}'",
            "TBLPROPERTIES (",
            properties,
            ");",
        ]
    )


def duckdb_ddl(out: str) -> str:
    """One ``CREATE OR REPLACE VIEW`` per feed over a local folder or an s3:// lake.

    A local ``out`` is made absolute, so the views work from any working directory.
    """
    if out.startswith("s3://"):
        root = s3_root(out)
    elif "://" in out:
        raise ConfigError(
            f"--out {out!r} has an unknown scheme; use a folder or s3://bucket/prefix"
        )
    else:
        root = Path(out).expanduser().absolute().as_posix().rstrip("/") + "/"
    parts = [
        f"-- DuckDB views over the Threat Grid lake at {root}",
        "-- Generated by `harvester ddl --engine duckdb`. dt is the Hive partition, read as a",
        "-- DATE; filter on it to skip files:",
        "--   SELECT count(*) FROM ips WHERE dt BETWEEN DATE '2024-01-01' AND DATE '2024-01-31';",
        "-- DuckDB checks a view's files when it creates the view: for a feed with no file yet",
        '-- CREATE VIEW fails with "No files found that match the pattern" (the duckdb CLI goes',
        "-- on with the next statement unless -bail). Run this again after harvesting it.",
        "-- All files of a feed share one schema, so union_by_name is not needed (it would",
        "-- read every file's footer on each query).",
    ]
    if root.startswith("s3://"):
        parts += [
            "-- s3:// needs the httpfs extension (autoloaded) and credentials, for example:",
            "--   CREATE SECRET (TYPE s3, PROVIDER credential_chain);",
        ]
    for name in FEEDS:
        glob = _duckdb_literal(f"{root}{name}/*/*.parquet")
        parts += [
            "",
            f"CREATE OR REPLACE VIEW {_duckdb_id(name)} AS",
            "SELECT * FROM read_parquet(",
            f"    {glob},",
            "    hive_partitioning = true,",
            f"    hive_types = {{{_duckdb_literal(PARTITION)}: DATE}}",
            ");",
        ]
    return "\n".join(parts)


def s3_root(out: str, *, reader: str = "Athena") -> str:
    """``s3://bucket/prefix/`` (always one trailing slash) for an s3:// ``out``.

    ``reader`` names who needs S3 in the error for any other ``out``.
    """
    if not out.startswith("s3://"):
        raise ConfigError(
            f"--out {out!r} is not on S3; {reader} reads only s3://bucket/prefix lakes"
        )
    bucket, _, prefix = out.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"--out {out!r} has no bucket name; use s3://bucket/prefix")
    prefix = prefix.strip("/")
    root = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    if _UNSAFE_IN_LITERAL.search(root):
        raise ConfigError(f"--out {out!r} holds a quote, backslash or control character")
    return root


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _athena_id(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _duckdb_id(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duckdb_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
