"""The orchestrator: plan the run from the manifest, run it, record what is done.

:func:`plan` reads the manifest and works out (with :mod:`harvester.planner`) every
unit of the range, this shard's share, and which units are already complete with the
same query. :class:`Harvest` groups the rest into batches and runs them with a fixed
pool of workers under an :class:`asyncio.TaskGroup`: each batch pages through its span
(:mod:`harvester.paging`), streams every row into its own window's
:class:`~harvester.lake.WindowWriter`, commits the files and only then records each
window in the manifest. A batch that fails after its retries is reported and the
others go on; a refused key or an unwritable lake stops everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog

from harvester import manifest, report
from harvester.client import ApiClient, Page
from harvester.config import HarvestConfig
from harvester.errors import (
    FATAL,
    ApiUnreachable,
    ConfigError,
    ConnectionFailed,
    HarvesterError,
    StorageError,
    StorageFull,
    TransientError,
)
from harvester.lake import WindowWriter, stamp_bounds
from harvester.paging import page_through
from harvester.planner import Batch, Plan, Unit, assign_shard, group_units, resume_point
from harvester.ratelimit import AdaptiveRateLimiter
from harvester.report import Failure, FeedSummary, RunResult
from harvester.retry import RetryPolicy, Sleep
from harvester.schemas import FEEDS, items_to_table
from harvester.secret import Secret, redact
from harvester.storage import Store
from harvester.windows import Window, format_api, parse_api, plan_windows, query_bounds

log = structlog.get_logger("harvester")


async def plan(config: HarvestConfig, store: Store) -> Plan:
    """Plan the run; reads the manifest, makes no API call."""
    fingerprint = config.query.fingerprint
    every: list[Unit] = []
    entries_by_feed = {}
    for feed in config.feeds:
        entries = entries_by_feed[feed] = await manifest.load(store, feed)
        after = config.after
        if config.since_last:
            after = resume_point(entries, fingerprint, config.after)
            if after is None:
                raise ConfigError(
                    f"--since-last: the lake has no complete {feed} window with this query "
                    "yet; pass --after for the first run"
                )
        assert after is not None
        if after >= config.before:
            log.info("feed.up_to_date", feed=feed, until=format_api(after))
            continue
        windows = plan_windows(after, config.before, config.window)
        manifest.check_grid(feed, windows, entries)
        every.extend(Unit(window=w, feed=feed) for w in windows)
    every_done = frozenset(
        u
        for u in every
        if not config.force
        and (e := entries_by_feed[u.feed].get(u.window)) is not None
        and e.fingerprint == fingerprint
    )
    mine = assign_shard(every, config.shard, feeds=config.feeds)
    return Plan(
        units=tuple(mine),
        done=every_done.intersection(mine),
        every=tuple(sorted(every)),
        every_done=every_done,
    )


class Harvest:
    """One run of the harvester over a plan."""

    def __init__(
        self,
        config: HarvestConfig,
        *,
        api_key: Secret,
        store: Store,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        self._api_key = api_key
        self._sleep = sleep
        self._clock = clock
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: ApiClient | None = None
        self.result = RunResult(run_id=self.run_id, feeds={f: FeedSummary() for f in config.feeds})

    def snapshot(self) -> dict[str, FeedSummary]:
        """Live per-feed totals, request counters included (for a progress display)."""
        return {feed: summary.copy() for feed, summary in self.result.feeds.items()}

    def stop(self) -> None:
        """Stop taking new units and abandon in-flight ones (their files are discarded)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()

    def _new_client(self) -> ApiClient:
        config = self.config
        limiter = AdaptiveRateLimiter(config.rate, clock=self._clock, sleep=self._sleep)
        policy = RetryPolicy(attempts=config.attempts, timeout=config.retry_timeout)
        return ApiClient(
            base_url=config.base_url,
            api_key=self._api_key,
            auth=config.auth,
            concurrency=config.concurrency,
            limiter=limiter,
            policy=policy,
            request_timeout=config.request_timeout,
            counters={feed: s.counters for feed, s in self.result.feeds.items()},
            sleep=self._sleep,
        )

    def _params(self, span: Window) -> dict[str, str]:
        """The query string of every page of ``span``, less ``limit`` and ``offset``."""
        after, before = query_bounds(span)
        return {**self.config.query.params(), "after": after, "before": before}

    async def execute(self) -> RunResult:
        """Plan from the lake's manifest, then harvest what the plan has left."""
        return await self.run(await plan(self.config, self.store))

    async def run(self, the_plan: Plan) -> RunResult:
        """Harvest every unit the plan has left to do."""
        started = self._clock()
        started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        todo = the_plan.todo
        for unit in the_plan.units:
            summary = self.result.feeds[unit.feed]
            summary.windows += 1
            if unit in the_plan.done:
                summary.skipped += 1
        log.info(
            "run.start",
            run_id=self.run_id,
            units=len(the_plan.units),
            todo=len(todo),
            skipped=len(the_plan.units) - len(todo),
            shard=str(self.config.shard),
        )
        if todo:
            try:
                await self._harvest(todo)
            except StorageFull:
                # The disk is full, but the report may still fit (it is small, and some
                # staged files were just removed): keep the run on record if it does.
                with contextlib.suppress(StorageError):
                    await self._report(started, started_at)
                raise
        return await self._report(started, started_at) if todo else self._finish(started)

    async def _harvest(self, todo: list[Unit]) -> None:
        await self.store.check_writable()
        async with self._new_client() as client:
            self._client = client
            await self._preflight(client, todo[0])
            batches = group_units(todo)
            queue = iter(batches)  # shared by the workers: each batch is taken once
            workers = min(self.config.concurrency, len(batches))
            try:
                with _rare_collections:
                    async with asyncio.TaskGroup() as group:
                        for _ in range(workers):
                            task = group.create_task(self._worker(client, queue))
                            self._tasks.add(task)
                            task.add_done_callback(self._tasks.discard)
            except BaseExceptionGroup as group_error:
                raise _first_fatal(group_error) from None

    def _finish(self, started: float) -> RunResult:
        self.result.interrupted = self._stopping.is_set()
        self.result.seconds = self._clock() - started
        return self.result

    async def _report(self, started: float, started_at: str) -> RunResult:
        result = self._finish(started)
        ended_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        built = report.build_report(self.config, result, started_at=started_at, ended_at=ended_at)
        key = await report.write_report(self.store, built)
        log.info("run.report", key=key)
        return result

    async def _preflight(self, client: ApiClient, unit: Unit) -> None:
        """One small request first: a dead URL or a refused key fails fast and clearly."""
        quick = RetryPolicy(attempts=3, timeout=30.0, initial=0.2, maximum=2.0)
        try:
            params = {**self._params(unit.window), "limit": "1", "offset": "0"}
            await client.fetch_page(unit.feed, params, policy=quick)
        except ConnectionFailed as exc:
            raise ApiUnreachable(
                f"cannot reach the API at {self.config.base_url} ({exc}); check --base-url "
                "and the network"
            ) from exc
        except TransientError as exc:
            # The API answered: it is reachable and took the key. Let the window itself
            # retry and, if it must, fail on its own.
            log.warning("preflight.failed", feed=unit.feed, error=type(exc).__name__)

    async def _worker(self, client: ApiClient, queue: Iterator[Batch]) -> None:
        """Take batches one by one until none is left or the run is stopping.

        A fixed pool of workers, not a task per unit, keeps memory flat over years of
        small windows.
        """
        for batch in queue:
            if self._stopping.is_set():
                return
            try:
                await self._guarded(client, batch)
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    # stop() cancelled us: the batch's staged files are already gone.
                    log.warning("window.abandoned", feed=batch.feed, window=str(batch.span))
                    return
                raise

    async def _guarded(self, client: ApiClient, batch: Batch) -> None:
        """Harvest one batch: a failure is recorded and logged, a fatal error propagates."""
        summary = self.result.feeds[batch.feed]
        started = self._clock()
        try:
            await self._harvest_batch(client, batch)
        except FATAL:
            raise
        except HarvesterError as exc:
            # Only our own errors fail a window: anything else is a bug, and must reach
            # the CLI's exit 70 instead of passing as "run the same command again".
            reason = redact(str(exc)) or type(exc).__name__
            for unit in batch.units:
                summary.failed += 1
                self.result.failures.append(Failure.of(unit.feed, unit.window, exc, reason))
                log.error(
                    "window.failed",
                    feed=unit.feed,
                    window=str(unit.window),
                    error=type(exc).__name__,
                    reason=reason,
                )
        finally:
            summary.seconds += self._clock() - started

    async def _harvest_batch(self, client: ApiClient, batch: Batch) -> None:
        """Page through the batch's span; route rows to their windows; commit, then record."""
        feed = FEEDS[batch.feed]
        span = batch.span

        query = self._params(span)

        async def fetch(offset: int, limit: int) -> Page:
            params = {**query, "limit": str(limit), "offset": str(offset)}
            return await client.fetch_page(batch.feed, params)

        async with contextlib.AsyncExitStack() as stack:
            writers = [
                await stack.enter_async_context(WindowWriter(self.store, feed, window))
                for window in batch.windows
            ]

            async def on_page(page: Page) -> None:
                # Inline, not in a thread: the conversion holds the GIL throughout, so a
                # thread would only add switches (measured: slower on scenario a).
                table = items_to_table(feed, page.items)
                # Newest first or not, one page spans a few windows of the batch at most:
                # hand it only to those, not to every writer of a day of quarter hours.
                bounds = stamp_bounds(table)
                if bounds is None:
                    return
                low, high = bounds
                for writer in writers:
                    start, end = writer.window.seconds
                    if start <= high and low < end:
                        await writer.add(table, bounds)

            paged = await page_through(
                fetch,
                limit=self.config.limit,
                prefetch=self.config.prefetch,
                on_page=on_page,
                covered=lambda page: covered_share(page, span),
            )
            committed = [(writer, await writer.finish()) for writer in writers]
        summary = self.result.feeds[batch.feed]
        summary.pages += paged.pages
        for writer, files in committed:
            entry = manifest.Entry(
                feed=batch.feed,
                window=writer.window,
                fingerprint=self.config.query.fingerprint,
                query=self.config.query.describe(),
                rows=writer.rows,
                pages=paged.pages,  # of the query that fetched the whole batch
                files=tuple(files),
                run_id=self.run_id,
                shard=str(self.config.shard),
            )
            await manifest.record(self.store, entry)
            summary.done += 1
            summary.rows += writer.rows
            log.info(
                "window.done",
                feed=batch.feed,
                window=str(writer.window),
                rows=writer.rows,
                pages=entry.pages,
                batch=str(span),
            )


def covered_share(page: Page, span: Window) -> float | None:
    """How much of ``span`` the pages up to ``page`` have covered, if items are newest first.

    The oldest item of the page bounds what is left; None when the page does not look
    newest first or its stamps are not the documented form (paging then just fetches
    ahead as deep as it may).
    """
    try:
        newest = parse_api(page.items[0]["timestamp"])
        oldest = parse_api(page.items[-1]["timestamp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    if not span.start <= oldest <= newest < span.end:
        return None
    return max((span.end - oldest) / (span.end - span.start), 1e-9)


class _RareCollections:
    """Collect cyclic garbage rarely while pages are decoded.

    Each page is a thousand fresh dicts, which hold no cycles; at the default threshold
    the collector walks them about once a page (measured: ~8% of a CPU-bound run, most
    of it inside JSON decoding). Harvests nested in one process restore the previous
    thresholds only when the outermost one ends.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._saved = gc.get_threshold()

    def __enter__(self) -> None:
        if self._depth == 0:
            self._saved = gc.get_threshold()
            gc.set_threshold(100_000, 20, 20)
        self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            gc.set_threshold(*self._saved)


_rare_collections = _RareCollections()


def _first_fatal(group: BaseExceptionGroup[Any]) -> BaseException:
    """Unwrap the TaskGroup's error: the one that cancelled the others.

    A bug (not a HarvesterError) wins over a fatal harvester error, so it is never
    hidden behind the cancellations it caused.
    """
    errors: list[BaseException] = []
    pending = list(group.exceptions)
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            errors.append(error)
    bugs = [e for e in errors if not isinstance(e, HarvesterError | asyncio.CancelledError)]
    return (bugs or errors)[0]
