"""Group commits: finished spans become durable day files and manifest entries together.

Workers hand in spans as they finish (their rows spooled), fail, or are left to another
run. A (feed, day) is *ready* once every window of it this run had to do is settled.
Every ``--commit-every`` seconds (and at the end) the ready days of all feeds are
committed as one group:

1. each day's files are written whole, by compare-and-set (:mod:`harvester.lake.writer`);
2. each (feed, month) partition touched records its windows and files -- one conditional
   write per month, not one object per window;
3. the head records the months and the failures -- one conditional write per group.

A window is recorded only after its files are durable, and a partition only after all
of its group's files, so ``kill -9`` at any moment leaves windows either recorded with
their files or not recorded (and harvested again by the next run). A crash between 2
and 3 leaves the head behind its partitions; the next run that reads those partitions
heals it (:meth:`~harvester.manifest.model.Head.with_partition`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import structlog

from harvester.errors import FATAL, HarvesterError, unwrap
from harvester.intervals import Spans
from harvester.lake.byday import DayRows
from harvester.lake.layout import day_of, day_start, is_legacy
from harvester.lake.spool import Spool
from harvester.lake.writer import SMALL_ROWS, DayJob, DayResult, DayWriter
from harvester.leases import Block, Leases
from harvester.manifest.io import Fenced, Manifest, PartitionUpdate, Versioned
from harvester.manifest.model import (
    FailedSpan,
    FileRecord,
    Head,
    Partition,
    WindowRecord,
    ceil_grid,
    month_domain,
    month_of,
)
from harvester.report import Failure, FeedSummary
from harvester.schemas import FEEDS
from harvester.secret import redact
from harvester.spans import Span
from harvester.windows import format_api

if TYPE_CHECKING:
    from harvester.iceberg.sink import IcebergSink

log = structlog.get_logger("harvester")

DAY = 86_400
PARALLEL_DAYS = 8
"""Day files written at once in a commit (over all its feeds)."""
PARALLEL_GROUPS = 2
"""Groups of small days written at once in a commit (over all its feeds).

A group's work is mostly Python and Arrow calls that hold the GIL between short system
calls: more groups at once than cores only make each wait for the GIL in turn (a filtered
sparse year took 0.59-0.66 s with eight at once, 0.52-0.62 s with two, side by side)."""


@dataclass(frozen=True, kw_only=True)
class _Month:
    """A month of one feed, ready to have its days written and recorded."""

    days: list[date]
    current: Versioned
    """Its partition as read (and marked for folding, if it had old files)."""
    part: Partition
    """Its partition as first read: the files the days' writes start from."""
    previous: dict[int, WindowRecord]
    """Its windows before this commit."""


@dataclass(frozen=True, kw_only=True)
class _Records:
    """What one month's partition is to record, from the days written in a commit."""

    days: list[date]
    """The days written (those that failed left out)."""
    results: dict[date, DayResult]
    windows: list[WindowRecord]
    files: list[FileRecord]
    drops: list[str]

    @property
    def anything(self) -> bool:
        """Whether the partition changes at all (a file written, a window or file recorded)."""
        return bool(self.windows or self.drops or any(r.written for r in self.results.values()))

    def apply(self, part: Partition) -> Partition:
        """``part`` with these records."""
        return part.with_changes(windows=self.windows, files=self.files, drop_files=self.drops)


BATCH_DAYS = 31
"""Days at most in one group: a group's files are synced together, and on ext4 a sync
every month's worth of small files kept creating them fast (the file system's inode
allocator slows down while many created files wait unsynced)."""
SMALL_DAY_ROWS = SMALL_ROWS
"""A fresh day of at most this many rows is *small* (one small file): small days are
written in groups, from memory. A bigger day is written on its own, through a staged
file, side by side with other days: its cost is encoding, which threads share."""
BATCH_ROWS = BATCH_DAYS * SMALL_DAY_ROWS
"""Rows at most in one group of small days."""


def batches(
    days: Sequence[date], rows: Callable[[date], int], *, limit: int, most: int = BATCH_DAYS
) -> list[list[date]]:
    """``days`` in order, cut into groups of at most ``limit`` rows and ``most`` days.

    Small days share a group, so a sparse month is one thread trip; big days keep a
    group each (a day over ``limit`` alone), so dense days are still encoded side by side.
    """
    groups: list[list[date]] = []
    total = 0
    for day in days:
        size = rows(day)
        if groups and total + size <= limit and len(groups[-1]) < most:
            groups[-1].append(day)
            total += size
        else:
            groups.append([day])
            total = size
    return groups


def _epoch_day(day: date) -> int:
    """``day`` as days since 1970-01-01, as :attr:`Spool.days` counts them."""
    return day.toordinal() - _EPOCH_ORDINAL


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def hull(day: date, step: int) -> tuple[int, int]:
    """The windows (of ``step`` seconds) that share rows with ``day``, as one interval."""
    start = day_start(day)
    return start // step * step, ceil_grid(start + DAY, step)


def days_of(spans: Spans) -> list[date]:
    """Every UTC day ``spans`` touches."""
    out: list[date] = []
    for start, end in spans:
        day = day_of(start)
        last = day_of(end - 1)
        while day <= last:
            out.append(day)
            day = date.fromordinal(day.toordinal() + 1)
    return sorted(set(out))


@dataclass(kw_only=True)
class _Spooled:
    span: Span
    spool: Spool
    days: set[date] = field(default_factory=set)


@dataclass(kw_only=True)
class _Feed:
    unresolved: Spans
    harvested: Spans = field(default_factory=Spans)
    failures: list[FailedSpan] = field(default_factory=list)
    spooled: list[_Spooled] = field(default_factory=list)


class Committer:
    """Collects a run's finished spans and commits their days in groups."""

    def __init__(
        self,
        *,
        manifest: Manifest,
        writer: DayWriter,
        sink: IcebergSink | None = None,
        leases: Leases,
        todo: Mapping[str, Spans],
        step: int,
        fingerprint: str,
        query: Mapping[str, Any],
        run_id: str,
        summaries: Mapping[str, FeedSummary],
        failures: list[Failure],
        commit_every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifest = manifest
        self.writer = writer
        self.sink = sink
        """Iceberg tables instead of the Hive layout's day files, when set."""
        self.leases = leases
        self.step = step
        self.fingerprint = fingerprint
        self.query = dict(query)
        self.run_id = run_id
        self.summaries = summaries
        self.failures = failures
        self.commit_every = commit_every
        self._clock = clock
        self._feeds = {feed: _Feed(unresolved=spans) for feed, spans in todo.items()}
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = False
        self._ready_since: float | None = None
        self._lock = asyncio.Lock()
        self._days = asyncio.Semaphore(PARALLEL_DAYS)
        self._groups = asyncio.Semaphore(PARALLEL_GROUPS)
        """Days written at once, over all the feeds committing: their rows are in memory."""
        self.head: Head | None = None
        """The head as the last commit left it."""

    # --- what workers report --------------------------------------------------------

    def finished(self, span: Span, spool: Spool) -> None:
        """``span`` was harvested; its rows are in ``spool``."""
        state = self._feeds[span.feed]
        covered = Spans.one(span.start, span.end)
        state.unresolved = state.unresolved - covered
        state.harvested = state.harvested | covered
        state.spooled.append(_Spooled(span=span, spool=spool, days=set(days_of(covered))))
        self._settled()

    def failed(self, span: Span, error: HarvesterError) -> None:
        """``span``'s windows failed for good in this run."""
        state = self._feeds[span.feed]
        state.unresolved = state.unresolved - Spans.one(span.start, span.end)
        reason = redact(str(error)) or type(error).__name__
        self._fail(span.feed, Spans.one(span.start, span.end), error, reason)
        self._settled()

    def left(self, feed: str, spans: Spans) -> None:
        """Another run holds ``spans``: this run will not settle them."""
        state = self._feeds.get(feed)
        if state is not None:
            state.unresolved = state.unresolved - spans
            self._settled()

    def _fail(self, feed: str, spans: Spans, error: BaseException, reason: str) -> None:
        state = self._feeds[feed]
        summary = self.summaries[feed]
        for start, end in spans:
            state.failures.append(
                FailedSpan(
                    start=start,
                    end=end,
                    error=type(error).__name__,
                    reason=reason,
                    run_id=self.run_id,
                )
            )
            for w in range(start, end, self.step):
                window = _window(w, w + self.step)
                summary.failed += 1
                self.failures.append(
                    Failure(
                        feed=feed,
                        start=window[0],
                        end=window[1],
                        error=type(error).__name__,
                        reason=reason,
                    )
                )
                log.error(
                    "window.failed",
                    feed=feed,
                    window=f"[{window[0]}, {window[1]})",
                    error=type(error).__name__,
                    reason=reason,
                )

    def _settled(self) -> None:
        if self._ready_since is None:
            self._ready_since = self._clock()
        self._wake.set()

    # --- committing -----------------------------------------------------------------

    async def run(self) -> None:
        """Commit every ``commit_every`` seconds while anything is ready, until :meth:`close`.

        A commit is never cancelled half way: :meth:`close` lets the one under way end.
        """
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            since = self._ready_since
            if since is not None and not self._closing:
                wait = since + self.commit_every - self._clock()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), wait)
            if not self._closing:
                await self.flush()

    def close(self) -> None:
        """Stop :meth:`run` after the commit under way (the caller then flushes once more)."""
        self._closing = True
        self._closed.set()
        self._wake.set()

    async def flush(self) -> None:
        """Commit every ready day now."""
        async with self._lock:
            self._ready_since = None
            jobs: dict[str, list[date]] = {}
            failures: dict[str, list[FailedSpan]] = {}
            for feed, state in self._feeds.items():
                ready = [d for d in days_of(state.harvested) if self._ready(state, d)]
                if ready:
                    jobs[feed] = ready
                if state.failures:
                    failures[feed], state.failures = state.failures, []
            if not jobs and not failures:
                return
            began = self._clock()
            changed: list[tuple[Partition, str]] = []
            if self.sink is not None:
                for feed, days in jobs.items():
                    changed += await self._commit_feed(feed, days)
            else:
                changed = await self._commit_feeds(jobs)
            if changed or failures:
                self.head = await self._record_head(changed, failures)
            # One line per group commit: how much a commit carries, and what it costs.
            log.info(
                "commit.done",
                feeds=sorted(jobs),
                days=sum(len(days) for days in jobs.values()),
                partitions=len(changed),
                seconds=round(self._clock() - began, 3),
            )

    async def _commit_feeds(self, jobs: Mapping[str, list[date]]) -> list[tuple[Partition, str]]:
        """Commit each feed's ready days, the feeds at once; their changed partitions.

        Each feed has its own files, partitions and leases; the head is written once,
        after all of them (a fold of a version 1 lake also marks it on the way, by
        compare-and-set like any writer). One feed's days are written while another
        records a month, instead of one feed after another; the days written at once
        stay :data:`PARALLEL_DAYS` in all (each holds its rows in memory: a gate per
        feed cost bench a 150 MB of peak memory). A fatal error or a bug is
        raised only once every feed has settled, so none is cut off between writing
        its files and recording them. (An Iceberg lake's feeds commit one by one.)
        """
        settled = await asyncio.gather(
            *(self._commit_feed(feed, days) for feed, days in jobs.items()),
            return_exceptions=True,
        )
        changed: list[tuple[Partition, str]] = []
        errors: list[BaseException] = []
        for outcome in settled:
            if isinstance(outcome, BaseException):
                errors.append(outcome)
            else:
                changed += outcome
        if errors:
            raise unwrap(BaseExceptionGroup("committing feeds", errors))
        return changed

    def _ready(self, state: _Feed, day: date) -> bool:
        return not state.unresolved.clip(*hull(day, self.step))

    async def _commit_feed(self, feed: str, days: list[date]) -> list[tuple[Partition, str]]:
        if self.sink is not None:
            return await self._commit_iceberg(feed, days, self.sink)
        by_month: dict[str, list[date]] = {}
        for day in days:
            by_month.setdefault(month_of(hull(day, self.step)[0]), []).append(day)
        read = await self.manifest.read_partitions(feed, by_month)
        ready: dict[str, _Month] = {}
        for month, month_days in sorted(by_month.items()):
            try:
                ready[month] = await self._prepare_month(feed, month, month_days, read[month])
            except FATAL:
                raise
            except HarvesterError as exc:
                self._drop_month(feed, month_days, exc)
        # The days of every month are written together: a sparse feed's small days are
        # one group (one encoding trip, one store write, one sync), not one a month.
        results, failed = await self._write_days(
            feed,
            [d for m in ready.values() for d in m.days],
            {month: m.part for month, m in ready.items()},
        )
        # ... and every month's partition is written in one group as well; a month whose
        # lease was lost while its days were written is not recorded.
        for month in [m for m in ready if not self.leases.holds((feed, m))]:
            lost = Fenced(f"lost the lease on {feed} {month}")
            self._drop_month(feed, ready.pop(month).days, lost)
        recorded = {
            month: self._month_records(feed, prepared, results, failed)
            for month, prepared in sorted(ready.items())
        }
        updates = [
            PartitionUpdate(
                month=month,
                change=r.apply,
                token=self.leases.token((feed, month)),
                known=ready[month].current,
            )
            for month, r in recorded.items()
            if r.anything
        ]
        written = await self.manifest.update_partitions(feed, updates)
        changed: list[tuple[Partition, str]] = []
        for month, r in recorded.items():
            outcome = written.get(month)
            if isinstance(outcome, FATAL):
                raise outcome
            if isinstance(outcome, HarvesterError):
                self._drop_month(feed, ready[month].days, outcome)
                continue
            self._committed(feed, r.days, r.windows, results=r.results.values())
            if outcome is not None:
                assert outcome.version is not None
                changed.append((outcome.part, outcome.version))
        return changed

    def _drop_month(self, feed: str, days: list[date], error: HarvesterError) -> None:
        state = self._feeds[feed]
        self._drop(feed, days, Spans.of(hull(d, self.step) for d in days) & state.harvested, error)

    def _drop(self, feed: str, days: Iterable[date], spans: Spans, error: HarvesterError) -> None:
        """The windows of ``days`` could not be committed: they failed in this run."""
        state = self._feeds[feed]
        state.harvested = state.harvested - spans
        self._fail(feed, spans, error, redact(str(error)) or type(error).__name__)
        self._release_spools(feed, set(days))

    async def _prepare_month(
        self, feed: str, month: str, days: list[date], current: Versioned
    ) -> _Month:
        """Check the month's lease, and mark the windows of days about to be folded."""
        if not self.leases.holds((feed, month)):
            raise Fenced(f"lost the lease on {feed} {month}")
        part = current.part
        legacy_days = [d for d in days if any(is_legacy(f.key) for f in part.day_files(str(d)))]
        previous = dict(part.windows)
        if legacy_days:
            # The old per-window files of these days are about to be deleted and folded
            # into one file: first make their windows incomplete, so a crash in between
            # means they are harvested again, never that the manifest points at nothing.
            # The files stay recorded (holding no complete window) until the fold records
            # the new file: a run killed after deleting only some of them leaves the rest
            # visible, and the next write of the day must fold those too, not add a
            # file beside them (a reader would see their rows twice).
            dropped_windows = [
                w
                for d in legacy_days
                for f in part.day_files(str(d))
                for low, high in f.windows
                for w in range(low, high, self.step)
            ]
            current = await self.manifest.update_partition(
                feed,
                month,
                lambda p: p.with_changes(drop_windows=dropped_windows),
                token=self.leases.token((feed, month)),
                known=current,
            )
            # ... and the head, before any file goes: a nightly run resumes from the
            # head, and must see those windows as the gap they now are.
            assert current.version is not None
            marked, version = current.part, current.version
            self.head = await self.manifest.update_head(
                lambda head: head.with_partition(marked, version)  # type: ignore[union-attr]
            )
        return _Month(days=days, current=current, part=part, previous=previous)

    def _month_records(
        self,
        feed: str,
        prepared: _Month,
        results: Mapping[date, DayResult],
        failed: Mapping[date, HarvesterError],
    ) -> _Records:
        """What the month's partition is to record; the days not written fail here."""
        days = prepared.days
        bad = sorted(d for d in days if d in failed)
        if bad:
            # The other days' files are written: record them, fail only these days.
            state = self._feeds[feed]
            spans = Spans.of(hull(d, self.step) for d in bad) & state.harvested
            self._drop(feed, bad, spans, failed[bad[0]])
            days = [d for d in days if d not in failed]
        mine = {d: results[d] for d in days}
        windows, files, drops = self._records(feed, days, mine, prepared.previous)
        return _Records(days=days, results=mine, windows=windows, files=files, drops=drops)

    async def _write_days(
        self, feed: str, days: list[date], parts: Mapping[str, Partition]
    ) -> tuple[dict[date, DayResult], dict[date, HarvesterError]]:
        """Write ``days``; the results of those written, and the errors of those not.

        A day that fails does not stop the others: they are written by then, or soon,
        and must be recorded, or the manifest would keep their old versions. A fatal
        error or a bug is raised once every day has settled.
        """
        state = self._feeds[feed]
        hulls = {day: hull(day, self.step) for day in days}
        part = {day: parts[month_of(hulls[day][0])] for day in days}
        recorded = {day: part[day].day_files(day.isoformat()) for day in days}
        held: dict[int, int] = {}
        for spooled in state.spooled:
            for n, count in spooled.spool.days.items():
                held[n] = held.get(n, 0) + count
        # A day that no spool holds a row of, and the lake holds no file of, has nothing
        # to write: its windows are recorded with no rows. Most days of a sparse or
        # filtered range are such days; they cost no thread trip and no spool read.
        empty = {d for d in days if _epoch_day(d) not in held and not recorded[d]}
        # Each spool is split by day once for these days, not filtered once per day.
        sources = []
        for spooled in state.spooled:
            start, end = spooled.span.start, spooled.span.end
            wanted = [
                d
                for d, (low, high) in hulls.items()
                if start < high and low < end and _epoch_day(d) in spooled.spool.days
            ]
            if wanted:
                sources.append((spooled.spool, wanted))
        rows = DayRows(sources, step=self.step, schema=FEEDS[feed].schema)

        def job(day: date) -> DayJob:
            low, high = hulls[day]
            return DayJob(
                feed=FEEDS[feed],
                day=day,
                step=self.step,
                replaced=state.harvested.clip(low, high),
                rows=rows,
                files=recorded[day],
                previous={s: w for s, w in part[day].windows.items() if low <= s < high},
            )

        async def one(day: date) -> DayResult:
            if day in empty:
                return DayResult(files=())
            async with self._days:
                return await self.writer.write(job(day))

        async def together(group: list[date]) -> list[DayResult | HarvesterError]:
            async with self._groups:
                return await self.writer.write_fresh([job(d) for d in group])

        # Small days with no file yet go to the writer in groups (a sparse month is one
        # group): two thread trips per group, not three per day, and no staged files.
        size = {d: held.get(_epoch_day(d), 0) for d in days}
        fresh = [
            d
            for d in days
            if d not in empty and not recorded[d] and size[d] <= SMALL_DAY_ROWS
        ]
        groups = batches(fresh, size.__getitem__, limit=BATCH_ROWS)
        single = [d for d in days if d not in fresh]
        alone, grouped = await asyncio.gather(
            asyncio.gather(*(one(day) for day in single), return_exceptions=True),
            asyncio.gather(*(together(group) for group in groups), return_exceptions=True),
        )
        settled: list[DayResult | BaseException] = list(alone)
        order = single + [d for group in groups for d in group]
        for group, outcome in zip(groups, grouped, strict=True):
            settled += [outcome] * len(group) if isinstance(outcome, BaseException) else outcome
        results: dict[date, DayResult] = {}
        failed: dict[date, HarvesterError] = {}
        errors: list[BaseException] = []
        for day, result in zip(order, settled, strict=True):
            if isinstance(result, DayResult):
                results[day] = result
            elif isinstance(result, HarvesterError) and not isinstance(result, FATAL):
                failed[day] = result
            elif not any(result is e for e in errors):
                errors.append(result)
        if errors:
            raise unwrap(BaseExceptionGroup("writing days", errors))
        return results, failed

    def _records(
        self,
        feed: str,
        days: list[date],
        results: Mapping[date, DayResult],
        previous: Mapping[int, WindowRecord],
    ) -> tuple[list[WindowRecord], list[FileRecord], list[str]]:
        state = self._feeds[feed]
        now = int(time.time())
        rows: dict[int, int] = {}
        files: dict[int, set[str]] = {}
        unchanged: set[int] = set()
        file_records: dict[str, FileRecord] = {}
        drops: set[str] = set()
        for result in results.values():
            for start, count in result.window_rows.items():
                rows[start] = rows.get(start, 0) + count
            unchanged |= result.unchanged
            for record in result.files:
                file_records[record.key] = record
                for start, end in record.windows:
                    for w in range(start, end, self.step):
                        files.setdefault(w, set()).add(record.key)
            drops |= set(result.dropped)
        records: list[WindowRecord] = []
        spans = Spans.of(hull(d, self.step) for d in days) & state.harvested
        kept_legacy = {
            w
            for result in results.values()
            for record in result.files
            for a, b in record.windows
            for w in range(a, b, self.step)
            if w in previous and not spans.containing(w)
        }
        for start, end in spans:
            for w in range(start, end, self.step):
                old = previous.get(w)
                if w in unchanged and old is not None and old.fingerprint == self.fingerprint:
                    continue  # harvested again, found exactly what the lake holds
                records.append(
                    WindowRecord(
                        start=w,
                        end=w + self.step,
                        fingerprint=self.fingerprint,
                        rows=rows.get(w, 0),
                        run_id=self.run_id,
                        completed_at=now,
                        files=tuple(sorted(files.get(w, ()))),
                    )
                )
        for w in sorted(kept_legacy):
            old = previous[w]
            records.append(
                WindowRecord(
                    start=old.start,
                    end=old.end,
                    fingerprint=old.fingerprint,
                    rows=old.rows,
                    run_id=old.run_id,
                    completed_at=old.completed_at,
                    files=tuple(sorted(files.get(w, ()))),
                )
            )
        return records, list(file_records.values()), sorted(drops - set(file_records))

    def _committed(
        self,
        feed: str,
        days: list[date],
        records: list[WindowRecord],
        *,
        results: Iterable[DayResult] = (),
        late: int = 0,
        unchanged: int = 0,
    ) -> None:
        state = self._feeds[feed]
        spans = Spans.of(hull(d, self.step) for d in days) & state.harvested
        summary = self.summaries[feed]
        fresh = {r.start: r for r in records if r.run_id == self.run_id}
        for start, end in spans:
            for w in range(start, end, self.step):
                record = fresh.get(w)
                rows = record.rows if record else 0
                summary.done += 1
                summary.rows += rows
                window = _window(w, w + self.step)
                log.info(
                    "window.done",
                    feed=feed,
                    window=f"[{window[0]}, {window[1]})",
                    rows=rows,
                    changed=record is not None,
                )
        done = list(results)
        summary.late += late + sum(r.late for r in done)
        summary.unchanged += unchanged + sum(len(r.unchanged) for r in done)
        state.harvested = state.harvested - spans
        self._release_spools(feed, set(days))

    async def _commit_iceberg(
        self, feed: str, days: list[date], sink: IcebergSink
    ) -> list[tuple[Partition, str]]:
        """One Iceberg snapshot for the feed's ready days, then its partitions."""
        state = self._feeds[feed]
        spans = Spans.of(hull(d, self.step) for d in days) & state.harvested
        months = sorted({month_of(s) for s, _ in _window_pairs(spans, self.step)})
        for month in months:
            if not self.leases.holds((feed, month)):
                # Fail every window of this commit: their spools go with the days, so a
                # window left harvested would be committed later with no rows.
                self._drop(feed, days, spans, Fenced(f"lost the lease on {feed} {month}"))
                return []
        read = await self.manifest.read_partitions(feed, months)
        previous = {w: r for v in read.values() for w, r in v.part.windows.items()}
        spools = [s.spool for s in state.spooled if spans.clip(s.span.start, s.span.end)]
        try:
            done = await sink.commit_feed(
                feed,
                replaced=spans,
                spools=spools,
                step=self.step,
                run_id=self.run_id,
                fingerprint=self.fingerprint,
                previous=set(previous),
            )
        except FATAL:
            raise
        except HarvesterError as exc:
            self._drop(feed, days, spans, exc)
            return []
        now = int(time.time())
        by_month: dict[str, list[WindowRecord]] = {}
        for w, end in _window_pairs(spans, self.step):
            old = previous.get(w)
            if w in done.unchanged and old is not None and old.fingerprint == self.fingerprint:
                continue
            by_month.setdefault(month_of(w), []).append(
                WindowRecord(
                    start=w,
                    end=end,
                    fingerprint=self.fingerprint,
                    rows=done.window_rows.get(w, 0),
                    run_id=self.run_id,
                    completed_at=now,
                    snapshot=done.snapshot,
                    sequence=done.sequence,
                )
            )
        changed = []
        records: list[WindowRecord] = []
        for month, month_records in by_month.items():
            token = self.leases.token((feed, month))

            def change(part: Partition, records: list[WindowRecord] = month_records) -> Partition:
                return part.with_changes(windows=records)

            updated = await self.manifest.update_partition(
                feed, month, change, token=token, known=read.get(month)
            )
            assert updated.version is not None
            changed.append((updated.part, updated.version))
            records += month_records
        self._committed(feed, days, records, late=done.late, unchanged=len(done.unchanged))
        return changed

    def _release_spools(self, feed: str, days: set[date]) -> None:
        state = self._feeds[feed]
        keep = []
        for spooled in state.spooled:
            spooled.days -= days
            if spooled.days:
                keep.append(spooled)
            else:
                spooled.spool.discard()
        state.spooled = keep

    async def _record_head(
        self,
        changed: list[tuple[Partition, str]],
        failures: Mapping[str, list[FailedSpan]],
    ) -> Head:
        queries = {self.fingerprint: self.query}

        def change(head: Head | None) -> Head:
            assert head is not None, "the run creates the head before it commits"
            for part, version in changed:
                head = head.with_partition(part, version, queries=queries)
            for feed, spans in failures.items():
                head = head.with_failures(feed, spans)
            return head

        return await self.manifest.update_head(change)

    def finished_blocks(self) -> list[Block]:
        """Leases this run no longer needs: nothing of their month is left to commit.

        None while a commit is under way: its partitions may be written and the head not
        yet, and a block given away then could be committed by another run whose head
        this run's late head write would take back to the older partition.
        """
        if self._lock.locked():
            return []
        done = []
        for feed, month in self.leases.blocks():
            state = self._feeds.get(feed)
            pending = (state.unresolved | state.harvested) if state else Spans()
            if not pending.clip(*month_domain(month, self.step)):
                done.append((feed, month))
        return done


def _window_pairs(spans: Spans, step: int) -> Iterable[tuple[int, int]]:
    for start, end in spans:
        for w in range(start, end, step):
            yield w, w + step


def _window(start: int, end: int) -> tuple[str, str]:
    return (
        format_api(datetime.fromtimestamp(start, UTC)),
        format_api(datetime.fromtimestamp(end, UTC)),
    )
