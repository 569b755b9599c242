"""The lake writer: one window's records into date-partitioned Parquet files.

Layout: ``{feed}/dt=YYYY-MM-DD/part-{window}.parquet``, ``dt`` taken from each
record's own timestamp in UTC. The name depends only on (feed, window), so
harvesting a window again replaces its files instead of adding new ones. Files are
zstd-compressed, one schema per feed (:mod:`harvester.schemas`).

:class:`WindowWriter` streams: each page is filtered to the rows the window owns,
split by day and appended to a per-day :class:`pyarrow.parquet.ParquetWriter` on a
staging path, in row groups of ``row_group_rows``. Memory stays bounded by one row
group per open day whatever the window holds. :meth:`WindowWriter.finish` commits the
files and removes any file a previous attempt left for a day that is now empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvester.schemas import Feed
from harvester.storage import Store, StoredFile
from harvester.windows import EPOCH, Window

ROW_GROUP_ROWS = 128 * 1024
COMPRESSION = "zstd"


def data_key(feed: str, day: date, window: Window) -> str:
    """The object key of ``feed``'s file for ``day`` written by ``window``."""
    return f"{feed}/dt={day.isoformat()}/part-{window.key}.parquet"


Bounds = tuple[int, int]


def stamp_bounds(table: pa.Table) -> Bounds | None:
    """The oldest and newest timestamp of ``table`` in epoch seconds; None if it has no rows."""
    bounds = pc.min_max(table.column("timestamp"))
    low, high = bounds["min"], bounds["max"]
    return (low.value, high.value) if low.is_valid else None


def owned_rows(table: pa.Table, window: Window, bounds: Bounds | None = None) -> pa.Table:
    """The rows of ``table`` whose timestamp lies in ``[start, end)``.

    ``bounds``, if given, is :func:`stamp_bounds` of ``table``, already known.
    """
    bounds = bounds or stamp_bounds(table)
    if bounds is None:
        return table
    low, high = bounds
    start, end = window.seconds
    if start <= low and high < end:
        return table  # the usual page: wholly inside, no need to copy it
    if high < start or low >= end:
        return table.slice(0, 0)
    stamps = table.column("timestamp")
    start = pa.scalar(window.start, type=stamps.type)
    end = pa.scalar(window.end, type=stamps.type)
    mask = pc.and_(pc.greater_equal(stamps, start), pc.less(stamps, end))
    return table.filter(mask)


def split_by_day(table: pa.Table, window: Window) -> dict[date, pa.Table]:
    """Group rows by their UTC date (the ``dt`` partition)."""
    days = window.days()
    if len(days) == 1:
        return {days[0]: table} if table.num_rows else {}
    day_numbers = pc.divide(table.column("timestamp").cast(pa.int64()), 86400)
    parts = {}
    for day in days:
        number = (day - EPOCH.date()).days
        part = table.filter(pc.equal(day_numbers, number))
        if part.num_rows:
            parts[day] = part
    return parts


@dataclass(kw_only=True)
class _DayFile:
    """One day's file of a window: staged, then written in row groups from a thread.

    Writing and abandoning hold one lock: a cancelled window's write may still be
    running in its thread, and closing the writer under it would crash the process.
    """

    staged: Path
    stack: contextlib.AsyncExitStack
    schema: pa.Schema
    writer: pq.ParquetWriter | None = None  # opened with the first row group, in a thread
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0
    rows: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, tables: list[pa.Table], row_group_rows: int, *, close: bool) -> None:
        """Open (the first time), append ``tables`` and, if ``close``, write the footer.

        Blocking: call it in a worker thread, one trip for all three. Does nothing once
        the file is closed or abandoned.
        """
        with self.lock:
            if self.closed:
                return
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.staged, self.schema, compression=COMPRESSION)
            if tables:
                self.writer.write_table(pa.concat_tables(tables), row_group_rows)
            if close:
                self.writer.close()
                self.closed = True

    def abandon(self) -> None:
        """Stop the file for good, after any write in flight (blocking: call in a thread)."""
        with self.lock:
            if self.writer is not None and not self.closed:
                with contextlib.suppress(Exception):
                    self.writer.close()
            self.closed = True


class WindowWriter:
    """Writes one (feed, window) to the lake; use as ``async with``.

    Leaving the block without :meth:`finish` (an error, a cancel) discards every
    staged file: nothing half-written is ever visible.
    """

    def __init__(
        self, store: Store, feed: Feed, window: Window, *, row_group_rows: int = ROW_GROUP_ROWS
    ) -> None:
        self.store = store
        self.feed = feed
        self.window = window
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._days: dict[date, _DayFile] = {}

    async def __aenter__(self) -> WindowWriter:
        for day in self.window.days():
            await self.store.discard_stale(data_key(self.feed.name, day, self.window))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close_all()

    async def add(self, table: pa.Table, bounds: Bounds | None = None) -> None:
        """Append the rows of ``table`` this window owns; ``bounds`` as :func:`owned_rows`."""
        owned = owned_rows(table, self.window, bounds)
        for day, part in split_by_day(owned, self.window).items():
            handle = self._days.get(day) or await self._open(day)
            handle.pending.append(part)
            handle.pending_rows += part.num_rows
            handle.rows += part.num_rows
            self.rows += part.num_rows
            if handle.pending_rows >= self.row_group_rows:
                await self._flush(handle)

    async def _open(self, day: date) -> _DayFile:
        stack = contextlib.AsyncExitStack()
        staged = await stack.enter_async_context(
            self.store.staging(data_key(self.feed.name, day, self.window))
        )
        handle = _DayFile(staged=staged, stack=stack, schema=self.feed.schema)
        self._days[day] = handle
        return handle

    async def _flush(self, handle: _DayFile) -> None:
        if not handle.pending:
            return
        tables, handle.pending, handle.pending_rows = handle.pending, [], 0
        await self._write(handle, tables, close=False)

    async def _write(self, handle: _DayFile, tables: list[pa.Table], *, close: bool) -> None:
        try:
            await asyncio.to_thread(handle.write, tables, self.row_group_rows, close=close)
        except OSError as exc:  # pyarrow's I/O errors are OSErrors: a full disk, say
            raise self.store.staging_error(exc, handle.staged) from exc

    async def finish(self) -> list[StoredFile]:
        """Close and commit every day file; delete files a day no longer has."""
        stored = []
        for day, handle in sorted(self._days.items()):
            rest, handle.pending = handle.pending, []
            await self._write(handle, rest, close=True)
            key = data_key(self.feed.name, day, self.window)
            stored.append(StoredFile.of(await self.store.commit(handle.staged, key)))
        written = {s.key for s in stored}
        for day in self.window.days():
            key = data_key(self.feed.name, day, self.window)
            if key not in written:
                # An earlier, interrupted attempt may have left a file for this day.
                await self.store.delete(key)
        await self._close_all()
        return stored

    async def _close_all(self) -> None:
        handles, self._days = list(self._days.values()), {}
        for handle in handles:
            if not handle.closed:
                await asyncio.to_thread(handle.abandon)
            await handle.stack.aclose()
