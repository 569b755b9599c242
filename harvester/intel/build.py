"""``harvester indicators``: build the indicator table, or bring it up to date.

An update touches only what changed. The lake's manifest says which (feed, day)s hold
data and a version token of each (:mod:`~harvester.intel.manifest_source`; the months
whose manifest partition is unchanged since the last build are not even read); the
builder reads the days whose token differs from the one its state recorded
(:mod:`~harvester.intel.state`), rewrites only the month partial files those days fall
in, and then recomputes the table of each type whose partials changed from that type's
partials alone. The lake's other days are never read again. Because partials keep
distinct (value, sample) and (value, ioc) pairs per (feed, day), the result equals a
full rebuild, also when a re-harvested window lost a value's only sighting.

Write order, which is what makes ``kill -9`` harmless:

1. the state, with every day about to be redone marked pending (a rebuild removes
   the state instead);
2. each month's partial file, replaced whole (staged, then committed);
3. each type's table, one object per type, replaced whole: a reader sees the type's
   old rows or its new rows, never a mix;
4. the state with the new tokens, last.

A build killed anywhere leaves pending days (or no state), so the next build redoes
them, rewriting the same partials and tables: every step is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from harvester.errors import ConfigError, unwrap
from harvester.intel.aggregate import batch_partials, indicator_rows, merge_month, prepare_day
from harvester.intel.engine import Engine
from harvester.intel.manifest_source import IcebergAccess, ManifestDaySource
from harvester.intel.resources import DEFAULT_MEMORY_LIMIT, check_memory_limit, memory_bytes
from harvester.intel.schema import (
    PARTIALS_PREFIX,
    STATE_KEY,
    TABLE_PREFIX,
    TYPES,
    feed_columns,
    month_of,
    parse_partial_key,
    parse_table_key,
    partial_key,
    table_key,
)
from harvester.intel.source import DaySource
from harvester.intel.state import (
    DayKey,
    State,
    UpdatePlan,
    day_versions,
    decode_state,
    encode_state,
    mark_pending,
    plan_update,
)
from harvester.storage import Store

log = structlog.get_logger("harvester")

DEFAULT_READ_AHEAD = 4
# Rows DuckDB can group per GB of --memory-limit, measured on a 3-year synthetic lake
# (benchmarks/indicators_memory.py): a day batch's list aggregates (630,000 records fit
# in 1 GB, 600,000 did not fit in 512 MB) and a table's joins (3.3 million partial rows
# fit in 1 GB, 6.5 million did not). Both with room to spare; neither can spill.
RECORDS_PER_GB = 500_000
PARTIAL_ROWS_PER_GB = 1_500_000


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to build: from scratch or not, and the resources it may use."""

    rebuild: bool = False
    """Ignore the state and the partials: recompute everything from the lake."""
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    """DuckDB's memory limit; beyond it, it spills to ``work_dir``."""
    work_dir: str | None = None
    """Parent of the local work folder (spill files, partial copies); the system's temp."""
    read_ahead: int = DEFAULT_READ_AHEAD
    """(feed, day)s read at once."""
    batch_rows: int | None = None
    """Records aggregated in one query (by default as many as ``memory_limit`` takes):
    with ``read_ahead`` days more, what a build holds in Arrow memory besides DuckDB's."""

    def __post_init__(self) -> None:
        check_memory_limit(self.memory_limit)
        if self.read_ahead < 1 or (self.batch_rows is not None and self.batch_rows < 1):
            raise ConfigError("read_ahead and batch_rows must be at least 1")

    @property
    def records_per_batch(self) -> int:
        """``batch_rows``, or what ``memory_limit`` allows."""
        if self.batch_rows is not None:
            return self.batch_rows
        return max(10_000, memory_bytes(self.memory_limit) * RECORDS_PER_GB // 10**9)


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What a build did."""

    rebuild: bool
    read: tuple[DayKey, ...]
    """The (feed, day)s read from the lake."""
    dropped: tuple[DayKey, ...]
    """The (feed, day)s that left the lake, whose aggregates were removed."""
    partials_written: int
    partials_removed: int
    tables: dict[str, int]
    """type -> rows, for each table written (0: the type's table was removed)."""
    seconds: float

    @property
    def up_to_date(self) -> bool:
        """Nothing had changed: the build wrote nothing."""
        return not (self.read or self.dropped or self.tables or self.partials_removed)


async def build_indicators(
    store: Store,
    *,
    source: DaySource | None = None,
    options: BuildOptions | None = None,
    iceberg: IcebergAccess | None = None,
) -> BuildResult:
    """Build or update ``{out}/indicators`` in ``store`` from ``source``.

    ``source`` defaults to the lake's manifest (:class:`ManifestDaySource`), which reads
    an Iceberg lake through the catalog ``iceberg`` names (by default ``run``'s).
    """
    options = options or BuildOptions()
    source = source or ManifestDaySource(store, iceberg=iceberg)
    began = time.monotonic()
    stored = await store.get_bytes(STATE_KEY)
    previous = None if options.rebuild else decode_state(stored)
    index = await source.index(previous)
    current = day_versions(index)
    plan = plan_update(None if previous is None else previous.versions, current)
    tables = await table_types(store)
    # Nothing to build from, and not even an empty table was built before: most likely
    # a wrong --out.
    if not current and not tables and stored is None:
        raise ConfigError(
            f"{store.url()} holds no feed data to build indicators from; harvest into it "
            "first, or fix --out"
        )
    if previous is not None and not plan.touched and tables == previous.tables:
        if index != previous.index:
            # Partitions rewritten without a change to their days' data: remember their
            # new versions, so the next build need not read them again.
            await store.put_bytes(STATE_KEY, encode_state(replace(previous, index=index)))
        log.info("indicators.up_to_date", lake=store.url())
        return BuildResult(
            rebuild=False, read=(), dropped=(), partials_written=0, partials_removed=0,
            tables={}, seconds=time.monotonic() - began,
        )  # fmt: skip
    log.info(
        "indicators.plan",
        rebuild=plan.rebuild,
        read=len(plan.read),
        dropped=len(plan.drop),
        months=len(plan.by_month),
    )
    if previous is None:
        await store.delete(STATE_KEY)  # killed from here on, the next build rebuilds too
    else:
        await store.put_bytes(STATE_KEY, encode_state(mark_pending(previous, plan.touched)))
    partials = await _partials(store)
    with _workspace(options) as (work, engine):
        written = await _update_partials(store, source, engine, work, plan, partials, options)
        if plan.rebuild:  # months no longer in the lake at all
            for kind, month in sorted(partials - written - set(plan.by_month)):
                await store.delete(partial_key(kind, month))
        stale = partials - set(plan.by_month) if plan.rebuild else set()
        removed = len(((partials & set(plan.by_month)) | stale) - written)
        after = _types(await _partials(store))
        redo = set(plan.types) | (after ^ tables) | (set(TYPES) if plan.rebuild else set())
        rows = {}
        for kind in (t for t in TYPES if t in redo):
            rows[kind] = await _write_table(store, engine, work, kind)
    there = (tables - redo) | {kind for kind, count in rows.items() if count}
    await store.put_bytes(STATE_KEY, encode_state(State(index=index, tables=frozenset(there))))
    result = BuildResult(
        rebuild=plan.rebuild,
        read=plan.read,
        dropped=plan.drop,
        partials_written=len(written),
        partials_removed=removed,
        tables=rows,
        seconds=time.monotonic() - began,
    )
    log.info(
        "indicators.done",
        read=len(result.read),
        dropped=len(result.dropped),
        partials=result.partials_written,
        tables=result.tables,
        seconds=round(result.seconds, 2),
    )
    return result


@contextlib.contextmanager
def _workspace(options: BuildOptions) -> Iterator[tuple[Path, Engine]]:
    with tempfile.TemporaryDirectory(prefix="harvester-indicators-", dir=options.work_dir) as tmp:
        engine = Engine(Path(tmp), memory_limit=options.memory_limit)
        try:
            yield Path(tmp), engine
        finally:
            engine.close()


async def _partials(store: Store) -> set[tuple[str, str]]:
    found = (parse_partial_key(k) for k in await store.list_keys(PARTIALS_PREFIX))
    return {f for f in found if f is not None}


async def table_types(store: Store) -> set[str]:
    """The types whose table object exists."""
    found = (parse_table_key(key) for key in await store.list_keys(TABLE_PREFIX))
    return {kind for kind in found if kind is not None}


def _types(partials: set[tuple[str, str]]) -> set[str]:
    return {kind for kind, _ in partials}


async def _update_partials(
    store: Store,
    source: DaySource,
    engine: Engine,
    work: Path,
    plan: UpdatePlan,
    existing: set[tuple[str, str]],
    options: BuildOptions,
) -> set[tuple[str, str]]:
    """Rewrite every month partial the plan touches, a month at a time; return them."""
    written: set[tuple[str, str]] = set()
    months = sorted({month for _, month in plan.by_month})
    for month in months:
        folder = work / "days" / month
        reads = [(feed, day) for feed, day in plan.read if month_of(day) == month]
        new = await _aggregate_days(source, engine, reads, folder, options)
        for (kind, when), redone in plan.by_month.items():
            if when != month:
                continue
            merge_old = not plan.rebuild and (kind, month) in existing
            if await _write_partial(store, engine, kind, month, merge_old, redone, new):
                written.add((kind, month))
        await asyncio.to_thread(_remove_tree, folder)
        log.info("indicators.month", month=month, days=len(reads))
    return written


async def _aggregate_days(
    source: DaySource,
    engine: Engine,
    reads: Sequence[DayKey],
    folder: Path,
    options: BuildOptions,
) -> list[Path]:
    """Read ``reads`` and write their partial rows in batch files; return the files."""
    files: list[Path] = []
    batch: list[tuple[str, date, pa.Table]] = []
    for start in range(0, len(reads), options.read_ahead):
        group = reads[start : start + options.read_ahead]
        tables = await _all([source.read_day(feed, day, feed_columns(feed)) for feed, day in group])
        batch += [(f, d, prepare_day(t)) for (f, d), t in zip(group, tables, strict=True)]
        del tables
        last = start + options.read_ahead >= len(reads)
        if batch and (last or sum(t.num_rows for _, _, t in batch) >= options.records_per_batch):
            path = folder / f"batch-{len(files)}.parquet"
            if await engine.run(batch_partials, engine, batch, path):
                files.append(path)
            batch = []
    return files


async def _write_partial(
    store: Store,
    engine: Engine,
    kind: str,
    month: str,
    merge_old: bool,
    redone: Sequence[DayKey],
    new: list[Path],
) -> bool:
    """Replace (or remove) one month's partial file; True if it exists afterwards."""
    key = partial_key(kind, month)

    async with contextlib.AsyncExitStack() as stack:
        old = await _fetch(stack, store, key) if merge_old else None
        staged = await stack.enter_async_context(store.staging(key))
        rows = await engine.run(merge_month, engine, kind, old, list(redone), new, staged)
        if rows:
            await store.commit(staged, key)
            return True
    await store.delete(key)
    return False


async def _write_table(store: Store, engine: Engine, work: Path, kind: str) -> int:
    """Recompute type ``kind``'s table from its partials and replace it whole."""
    key = table_key(kind)

    keys = sorted(
        k for k in await store.list_keys(f"{PARTIALS_PREFIX}type={kind}/") if parse_partial_key(k)
    )
    async with contextlib.AsyncExitStack() as stack:
        paths = []
        for partial in keys:
            path = await _fetch(stack, store, partial)
            if path is not None:
                paths.append(path)
        staged = await stack.enter_async_context(store.staging(key))
        partial_rows = await asyncio.to_thread(_count_rows, paths)
        buckets = max(1, math.ceil(partial_rows / _rows_per_bucket(engine.memory_limit)))
        rows = await engine.run(indicator_rows, engine, paths, staged, buckets=buckets)
        if rows:
            await store.commit(staged, key)
            log.info("indicators.table", type=kind, rows=rows)
            return rows
    await store.delete(key)
    log.info("indicators.table", type=kind, rows=0)
    return 0


async def _fetch(stack: contextlib.AsyncExitStack, store: Store, key: str) -> Path | None:
    """A local path to read ``key`` from while ``stack`` is open, or None if it is missing."""
    found = await stack.enter_async_context(store.fetch(key))
    return None if found is None else found[0]


def _count_rows(paths: Sequence[Path]) -> int:
    return sum(pq.read_metadata(path).num_rows for path in paths)


def _rows_per_bucket(memory_limit: str) -> int:
    """Partial rows one pass of the table query may take within ``memory_limit``."""
    return max(100_000, memory_bytes(memory_limit) * PARTIAL_ROWS_PER_GB // 10**9)


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


_T = TypeVar("_T")


async def _all(calls: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Await ``calls`` concurrently, in order; the first failure cancels the rest."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as errors:
        raise unwrap(errors) from None
    return [task.result() for task in tasks]
