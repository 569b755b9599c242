"""Group commits into Iceberg tables: one snapshot per feed per group.

The run's group committer (:mod:`harvester.committer`) hands over, per feed, the windows
a group harvested and the spools holding their rows. :class:`IcebergSink` writes one
data file per UTC day with exactly those rows (microsecond ``timestamptz``, Iceberg
field ids), uploads them under the table's location, and commits one transaction that
replaces the records of those windows by the files (:func:`commit_windows`). Our own
manifest is written after, by the caller: a crash in between replays the same windows,
which replaces them again.

A window harvested again whose rows are exactly those the table holds is left out of
the commit: a re-harvest that finds nothing new makes no snapshot and writes no file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from harvester.errors import unwrap
from harvester.intervals import Spans
from harvester.lake import days
from harvester.lake.spool import Spool
from harvester.schemas import FEEDS
from harvester.storage import ABSENT, Store

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from harvester.config import HarvestConfig
    from harvester.iceberg.ancestry import Ancestry
    from harvester.iceberg.catalog import IcebergLake


PARALLEL_UPLOADS = 8
"""Day files of one commit written and uploaded at once."""

@dataclass(frozen=True, kw_only=True)
class FeedCommit:
    """What one feed's commit did."""

    snapshot: int | None
    """The snapshot made; None when nothing changed (no snapshot was made)."""
    sequence: int | None
    window_rows: Mapping[int, int] = field(default_factory=dict)
    unchanged: frozenset[int] = frozenset()
    late: int = 0
    files: int = 0


def _windows(spans: Spans, step: int) -> Iterator[int]:
    for start, end in spans:
        yield from range(start, end, step)


def _instant(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class IcebergSink:
    """Writes groups of finished windows into the lake's Iceberg tables."""

    def __init__(self, config: HarvestConfig, store: Store, staging: Path) -> None:
        self.config = config
        self.store = store
        self.staging = staging
        self._lake: IcebergLake | None = None
        self._tables: dict[str, Table] = {}

    async def open(self) -> None:
        """Open (creating if need be) the catalog and the feeds' tables."""
        from harvester.iceberg.catalog import open_catalog
        from harvester.iceberg.tables import ensure_table

        config = self.config
        self._lake = await asyncio.to_thread(
            open_catalog,
            config.out,
            config.catalog,
            namespace=config.namespace,
            s3_endpoint_url=config.s3_endpoint_url,
            create=True,
        )
        for feed in config.feeds:
            self._tables[feed] = await asyncio.to_thread(ensure_table, self._lake, feed)

    async def commit_feed(
        self,
        feed: str,
        *,
        replaced: Spans,
        spools: Sequence[Spool],
        step: int,
        run_id: str,
        fingerprint: str,
        previous: set[int],
    ) -> FeedCommit:
        """Replace the records of ``replaced`` (windows) by the spools' rows: one snapshot.

        ``previous`` are the windows the manifest held complete before: only those are
        compared with the table, to leave unchanged ones out.
        """
        from harvester.iceberg.commit import commit_windows, summary_properties
        from harvester.iceberg.hint import publish_hint_quietly

        assert self._lake is not None, "open() first"
        table = self._tables[feed]
        schema = FEEDS[feed].schema
        new = await asyncio.to_thread(_rows, spools, replaced, schema)
        counts = days.window_counts(new, step)
        redo = [w for w in _windows(replaced, step) if w in previous]
        unchanged: set[int] = set()
        late = 0
        if redo:
            old = await asyncio.to_thread(_scan, table, redo, step, schema)
            for w in redo:
                one = Spans.one(w, w + step)
                was, now = days.select(old, one), days.select(new, one)
                if days.same_rows(was, now):
                    unchanged.add(w)
                else:
                    late += max(0, now.num_rows - was.num_rows)
        changed = replaced - Spans.of((w, w + step) for w in unchanged)
        window_rows = {w: n for w, n in counts.items() if replaced.containing(w)}
        if not changed:
            return FeedCommit(
                snapshot=None,
                sequence=None,
                window_rows=window_rows,
                unchanged=frozenset(unchanged),
            )
        rows = days.select(new, changed)
        parts = []
        for day in sorted({days_of(w) for w in _windows(changed, step)}):
            start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
            part = days.select(rows, Spans.one(start, start + days.DAY))
            if part.num_rows:
                parts.append((day, part))
        paths = await self._upload_all(feed, parts)
        windows = [(_instant(s), _instant(e)) for s, e in changed]
        properties = summary_properties(run_id=run_id, windows=windows, fingerprint=fingerprint)
        info = await asyncio.to_thread(
            commit_windows, table, windows=windows, files=paths, properties=properties
        )
        if info is not None:
            await asyncio.to_thread(publish_hint_quietly, table)
        return FeedCommit(
            snapshot=info.snapshot_id if info else None,
            sequence=info.sequence_number if info else None,
            window_rows=window_rows,
            unchanged=frozenset(unchanged),
            late=late,
            files=len(paths),
        )

    async def _upload_all(self, feed: str, parts: Sequence[tuple[date, pa.Table]]) -> list[str]:
        """Upload the day files of one commit, :data:`PARALLEL_UPLOADS` at a time.

        A sparse year is hundreds of small files: one at a time, each pays a whole
        round trip (and, locally, an fsync) before the next starts.
        """
        gate = asyncio.Semaphore(PARALLEL_UPLOADS)

        async def one(day: date, rows: pa.Table) -> str:
            async with gate:
                return await self._upload(feed, day, rows)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(day, rows)) for day, rows in parts]
        except BaseExceptionGroup as errors:
            raise unwrap(errors) from None
        return [task.result() for task in tasks]

    async def _upload(self, feed: str, day: date, rows: pa.Table) -> str:
        """Write one day's rows as an Iceberg data file and upload it; its full path."""
        from harvester.iceberg.tables import DataFileWriter, data_file_key

        assert self._lake is not None
        key = data_file_key(feed, day)
        staged = self.staging / key.rsplit("/", 1)[-1]

        def write() -> None:
            with DataFileWriter(staged, feed) as writer:
                writer.write(rows)

        try:
            try:
                await asyncio.to_thread(write)
            except OSError as exc:
                raise self.store.staging_error(exc, staged) from exc
            await self.store.commit(staged, key, expect=ABSENT)
        finally:
            staged.unlink(missing_ok=True)
        return f"{self._lake.root.rstrip('/')}/{key}"

    async def ancestry(self, feed: str) -> Ancestry | None:
        """The ancestry of ``feed``'s table now (None if there is no table yet)."""
        from harvester.iceberg.ancestry import ancestry_of

        table = self._tables.get(feed)
        if table is None:
            return None
        await asyncio.to_thread(table.refresh)
        return ancestry_of(table.metadata)


def days_of(epoch: int) -> date:
    """The UTC date of an instant."""
    return _instant(epoch).date()


def _rows(spools: Sequence[Spool], wanted: Spans, schema: pa.Schema) -> pa.Table:
    return days.concat([days.select(s.read(), wanted) for s in spools], schema)


def _scan(table: Table, windows: list[int], step: int, schema: pa.Schema) -> pa.Table:
    """The rows the table holds in ``windows``, in the lake's schema."""
    from harvester.iceberg.commit import window_filter, window_ranges

    pairs = [(_instant(w), _instant(w + step)) for w in windows]
    found = table.scan(row_filter=window_filter(window_ranges(pairs))).to_arrow()
    return days.concat([found.select(schema.names)], schema)


async def open_ancestries(config: HarvestConfig) -> dict[str, Ancestry] | None:
    """Each feed's table ancestry, for planning; None when the lake has no catalog yet."""
    from harvester.errors import ConfigError
    from harvester.iceberg.ancestry import ancestry_of
    from harvester.iceberg.catalog import open_catalog
    from harvester.iceberg.tables import load_table

    try:
        lake = await asyncio.to_thread(
            open_catalog,
            config.out,
            config.catalog,
            namespace=config.namespace,
            s3_endpoint_url=config.s3_endpoint_url,
        )
    except ConfigError:
        return None  # no catalog file yet: a new lake, nothing is done
    found: dict[str, Any] = {}
    for feed in config.feeds:
        table = await asyncio.to_thread(load_table, lake, feed)
        if table is not None:
            found[feed] = ancestry_of(table.metadata)
    return found
