"""Reading some windows of a feed table back, in the Hive layout's types.

The indicator builder (:mod:`harvester.intel.manifest_source`) reads an Iceberg lake a
(feed, UTC day) at a time, and only the rows of the windows the manifest records as
complete. :class:`WindowReader` opens the catalog and each feed's table once, on first
use, and answers each read with one pyiceberg scan whose row filter is those windows
(so only the day's partition's files are opened, and of them only the row groups the
filter can match). Iceberg stores ``timestamp`` in microseconds; the rows come back as
the feed's own schema (:data:`harvester.schemas.FEEDS`), seconds, which is exact for
what the harvester wrote.

Everything here blocks: call it in a worker thread from async code. Opening is
serialised by a lock, so several threads may read at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from harvester.config import DEFAULTS
from harvester.errors import ConfigError, StorageError
from harvester.intervals import Spans
from harvester.schemas import FEEDS

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from harvester.iceberg.catalog import IcebergLake

MICROS = 1_000_000


class WindowReader:
    """Reads windows of the feed tables of the Iceberg lake at ``out``."""

    def __init__(
        self,
        out: str,
        catalog: str | None,
        *,
        namespace: str | None = None,
        s3_endpoint_url: str | None = None,
    ) -> None:
        self.out = out
        self.catalog = catalog
        self.namespace = namespace or DEFAULTS["namespace"]
        self.s3_endpoint_url = s3_endpoint_url
        self._lock = threading.Lock()
        self._lake: IcebergLake | None = None
        self._tables: dict[str, Table] = {}

    def table(self, feed: str) -> Table:
        """``{namespace}.{feed}``, loaded once; :class:`ConfigError` if the catalog lacks it."""
        from harvester.iceberg.catalog import open_catalog
        from harvester.iceberg.tables import load_table

        with self._lock:
            if self._lake is None:
                self._lake = open_catalog(
                    self.out,
                    self.catalog,
                    namespace=self.namespace,
                    s3_endpoint_url=self.s3_endpoint_url,
                )
            found = self._tables.get(feed)
            if found is None:
                found = load_table(self._lake, feed)
                if found is None:
                    raise ConfigError(
                        f"the manifest of {self.out} records {feed} windows, but the catalog "
                        f"{self._lake.described} has no table {self.namespace}.{feed}; pass "
                        "the --catalog and --namespace the lake was harvested with"
                    )
                self._tables[feed] = found
            return found

    def read(self, feed: str, windows: Spans, columns: Sequence[str]) -> pa.Table:
        """``columns`` of the rows of ``feed`` in ``windows`` (epoch seconds), Hive types."""
        from harvester.iceberg.commit import window_filter
        from harvester.iceberg.tables import catalog_errors

        schema = pa.schema([FEEDS[feed].schema.field(c) for c in columns])
        if not windows:
            return schema.empty_table()
        table = self.table(feed)
        ranges = [(start * MICROS, end * MICROS) for start, end in windows]
        with catalog_errors(f"reading {feed} from {self.out}"):
            found = table.scan(
                row_filter=window_filter(ranges), selected_fields=tuple(columns)
            ).to_arrow()
        try:
            return found.select(list(columns)).cast(schema)
        except (pa.ArrowInvalid, KeyError) as exc:
            raise StorageError(
                f"the {feed} table of {self.out} holds rows the harvester did not write "
                f"({exc}); harvest its windows again with --force"
            ) from exc
