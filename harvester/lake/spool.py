"""A span's rows on local disk, as they arrive: an Arrow IPC file per span.

Pages are appended the moment they are converted, so a span of any length costs one
page of memory; the file is memory-mapped back when the span's days are written.
Writing IPC is a copy, not an encoding: the Parquet encoding happens once, when a day's
file is written from its spools. A span that fails or restarts discards its spool:
rows reach the lake only from spans that finished.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from harvester.errors import StorageError
from harvester.lake import days


class Spool:
    """The rows of one span, in arrival order, in one local file."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self.days: dict[int, int] = {}
        """Rows per UTC day (as days since the epoch) it holds: a commit skips the other
        days, and writes small days together."""
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None

    def append(self, table: pa.Table) -> None:
        """Add ``table``'s rows (blocking, but a copy: cheap enough for the event loop)."""
        if not table.num_rows:
            return
        if self._writer is None:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows
        # One small compute call a page; a sparse year's commit then knows which of its
        # 2,562 feed-days hold no rows at all without a thread trip for each.
        counts = pc.value_counts(pc.divide(days.seconds(table), days.DAY))
        for day, rows in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            self.days[day] = self.days.get(day, 0) + rows

    def close(self) -> None:
        """Finish the file so it can be read; idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def read(self) -> pa.Table:
        """The spooled rows, memory-mapped (no copy); an empty table if there are none."""
        self.close()
        if not self.rows:
            return self.schema.empty_table()
        try:
            with pa.memory_map(str(self.path)) as source:
                return pa.ipc.open_file(source).read_all()
        except OSError as exc:
            raise StorageError(f"cannot read the spool {self.path}: {exc}") from exc

    def discard(self) -> None:
        """Close and delete the file."""
        with contextlib.suppress(Exception):
            self.close()
        self.path.unlink(missing_ok=True)
