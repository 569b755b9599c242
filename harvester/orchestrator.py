"""The orchestrator: plan the units, run them concurrently, record what is done.

A *unit* is one (feed, window). :func:`plan` works out every unit of the range, this
shard's share, and which of those the manifest already holds with the same query.
:class:`Harvest` then runs the rest under an :class:`asyncio.TaskGroup`: each unit
pages through its window (:mod:`harvester.paging`), streams rows into a
:class:`~harvester.lake.WindowWriter`, commits the files and only then records the
unit in the manifest. A unit that fails after its retries is reported and the others
go on; a refused key or an unwritable lake stops everything at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from harvester import manifest, report
from harvester.client import ApiClient, Page
from harvester.config import HarvestConfig, Shard
from harvester.errors import (
    ApiUnreachable,
    AuthError,
    ConfigError,
    ConnectionFailed,
    HarvesterError,
    StorageAccessError,
    TransientError,
)
from harvester.lake import WindowWriter
from harvester.paging import page_through
from harvester.ratelimit import AdaptiveRateLimiter
from harvester.retry import RetryPolicy, Sleep
from harvester.schemas import FEEDS, items_to_table
from harvester.secret import Secret, redact
from harvester.storage import Store
from harvester.windows import EPOCH, Window, format_api, plan_windows, query_bounds

log = structlog.get_logger("harvester")


@dataclass(frozen=True, kw_only=True, order=True)
class Unit:
    """One feed over one window: the unit of work, of files and of the manifest."""

    window: Window
    feed: str

    def __str__(self) -> str:
        return f"{self.feed} {self.window}"


def shard_of(unit: Unit, *, feeds: Sequence[str], count: int) -> int:
    """The shard that owns ``unit``: fixed by the unit's absolute place on the grid.

    Windows are numbered from the epoch and feeds by their sorted name, and the
    numbers are dealt round-robin. A shard's share therefore does not depend on where
    a plan starts (``--since-last`` shards may plan at different moments) and any
    contiguous range of windows is dealt out evenly, within one unit per shard.
    """
    size = unit.window.end - unit.window.start
    slot = (unit.window.start - EPOCH) // size
    order = sorted(feeds)
    return (slot * len(order) + order.index(unit.feed)) % count


def assign_shard(units: Iterable[Unit], shard: Shard, *, feeds: Sequence[str]) -> list[Unit]:
    """The units of ``shard`` among ``units``, sorted."""
    return sorted(u for u in units if shard_of(u, feeds=feeds, count=shard.count) == shard.index)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run will do: every unit of this shard, and which are already done.

    ``every`` and ``every_done`` describe the whole job (all shards), for display.
    """

    units: tuple[Unit, ...]
    done: frozenset[Unit]
    every: tuple[Unit, ...] = ()
    every_done: frozenset[Unit] = frozenset()

    @property
    def total_units(self) -> int:
        """Units of the whole job, all shards together."""
        return len(self.every)

    @property
    def todo(self) -> list[Unit]:
        """Units still to harvest, oldest window first."""
        return [u for u in self.units if u not in self.done]


def resume_point(
    entries: dict[Window, manifest.Entry], fingerprint: str, start: datetime | None = None
) -> datetime | None:
    """The end of the contiguous run of complete windows from ``start`` (or the first one).

    A gap (a window that failed, or was never harvested) stops the run, so a nightly
    ``--since-last`` job goes back for it instead of skipping history for good.
    """
    complete = sorted(w for w, e in entries.items() if e.fingerprint == fingerprint)
    if start is not None:
        complete = [w for w in complete if w.start >= start]
    chain_end = start
    for window in complete:
        if chain_end is not None and window.start != chain_end:
            break
        chain_end = window.end
    return chain_end


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
        if (e := entries_by_feed[u.feed].get(u.window)) is not None and e.fingerprint == fingerprint
    )
    mine = assign_shard(every, config.shard, feeds=config.feeds)
    return Plan(
        units=tuple(mine),
        done=every_done.intersection(mine),
        every=tuple(sorted(every)),
        every_done=every_done,
    )


@dataclass(kw_only=True)
class FeedSummary:
    """Per-feed totals for the end-of-run summary and the run report."""

    windows: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    pages: int = 0
    rows: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass(kw_only=True)
class Failure:
    """A unit that did not complete, and why."""

    feed: str
    window: str
    error: str
    reason: str


@dataclass(kw_only=True)
class RunResult:
    """The outcome of a run."""

    run_id: str
    feeds: dict[str, FeedSummary]
    failures: list[Failure] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every unit of the plan is complete."""
        return not self.failures and not self.interrupted


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
        feeds = {}
        for feed, summary in self.result.feeds.items():
            live = FeedSummary(**vars(summary))
            counters = self._client.counters.get(feed) if self._client else None
            if counters is not None:
                live.requests, live.retries = counters.requests, counters.retries
                live.throttled, live.bytes = counters.throttled, counters.bytes
            feeds[feed] = live
        return feeds

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
            sleep=self._sleep,
        )

    def _params(self, unit: Unit, offset: int, limit: int) -> dict[str, str]:
        after, before = query_bounds(unit.window)
        return {
            **self.config.query.params(),
            "after": after,
            "before": before,
            "limit": str(limit),
            "offset": str(offset),
        }

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
            await self.store.check_writable()
            async with self._new_client() as client:
                self._client = client
                await self._preflight(client, todo[0])
                queue = iter(todo)  # shared by the workers: each unit is taken once
                workers = min(self.config.concurrency, len(todo))
                try:
                    async with asyncio.TaskGroup() as group:
                        for _ in range(workers):
                            task = group.create_task(self._worker(client, queue))
                            self._tasks.add(task)
                            task.add_done_callback(self._tasks.discard)
                except BaseExceptionGroup as group_error:
                    raise _first_fatal(group_error) from None
                for feed, counters in client.counters.items():
                    summary = self.result.feeds[feed]
                    summary.requests = counters.requests
                    summary.retries = counters.retries
                    summary.throttled = counters.throttled
                    summary.bytes = counters.bytes
        self.result.interrupted = self._stopping.is_set()
        self.result.seconds = self._clock() - started
        if todo:
            ended_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            built = report.build_report(
                self.config, self.result, started_at=started_at, ended_at=ended_at
            )
            key = await report.write_report(self.store, built)
            log.info("run.report", key=key)
        return self.result

    async def _preflight(self, client: ApiClient, unit: Unit) -> None:
        """One small request first: a dead URL or a refused key fails fast and clearly."""
        quick = RetryPolicy(attempts=3, timeout=30.0, initial=0.2, maximum=2.0)
        try:
            await client.fetch_page(unit.feed, self._params(unit, 0, 1), policy=quick)
        except ConnectionFailed as exc:
            raise ApiUnreachable(
                f"cannot reach the API at {self.config.base_url} ({exc}); check --base-url "
                "and the network"
            ) from exc
        except TransientError as exc:
            # The API answered: it is reachable and took the key. Let the window itself
            # retry and, if it must, fail on its own.
            log.warning("preflight.failed", feed=unit.feed, error=type(exc).__name__)

    async def _worker(self, client: ApiClient, queue: Iterator[Unit]) -> None:
        """Take units one by one until none is left or the run is stopping.

        A fixed pool of workers, not a task per unit, keeps memory flat over years of
        small windows.
        """
        for unit in queue:
            if self._stopping.is_set():
                return
            try:
                await self._guarded(client, unit)
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    # stop() cancelled us: the unit's staged files are already gone.
                    log.warning("window.abandoned", feed=unit.feed, window=str(unit.window))
                    return
                raise

    async def _guarded(self, client: ApiClient, unit: Unit) -> None:
        """Harvest one unit: a failure is recorded and logged, a fatal error propagates."""
        summary = self.result.feeds[unit.feed]
        started = self._clock()
        try:
            rows, pages = await self._harvest_unit(client, unit)
        except (AuthError, StorageAccessError):
            raise
        except Exception as exc:
            summary.failed += 1
            reason = redact(str(exc)) or type(exc).__name__
            self.result.failures.append(
                Failure(
                    feed=unit.feed,
                    window=str(unit.window),
                    error=type(exc).__name__,
                    reason=reason,
                )
            )
            log.error(
                "window.failed",
                feed=unit.feed,
                window=str(unit.window),
                error=type(exc).__name__,
                reason=reason,
            )
            return
        finally:
            summary.seconds += self._clock() - started
        summary.done += 1
        summary.rows += rows
        summary.pages += pages
        log.info("window.done", feed=unit.feed, window=str(unit.window), rows=rows, pages=pages)

    async def _harvest_unit(self, client: ApiClient, unit: Unit) -> tuple[int, int]:
        feed = FEEDS[unit.feed]

        async def fetch(offset: int, limit: int) -> Page:
            return await client.fetch_page(unit.feed, self._params(unit, offset, limit))

        async with WindowWriter(self.store, feed, unit.window) as writer:

            async def on_page(page: Page) -> None:
                table = await asyncio.to_thread(items_to_table, feed, page.items)
                await writer.add(table)

            paged = await page_through(
                fetch, limit=self.config.limit, prefetch=self.config.prefetch, on_page=on_page
            )
            files = await writer.finish()
        entry = manifest.Entry(
            feed=unit.feed,
            window=unit.window,
            fingerprint=self.config.query.fingerprint,
            query=self.config.query.describe(),
            rows=writer.rows,
            pages=paged.pages,
            files=tuple(files),
            run_id=self.run_id,
            shard=str(self.config.shard),
        )
        await manifest.record(self.store, entry)
        return writer.rows, paged.pages


def _first_fatal(group: BaseExceptionGroup[Any]) -> BaseException:
    """Unwrap the TaskGroup's error: the fatal one that cancelled the others."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_fatal(error)
        if isinstance(error, HarvesterError):
            return error
    return group.exceptions[0]


def describe_plan(the_plan: Plan, shard_count: int, feeds: Sequence[str]) -> dict[str, Any]:
    """A JSON-able view of a plan: per feed, and each shard's share of the job."""
    views: dict[str, dict[str, Any]] = {}
    for unit in the_plan.every:
        view = views.setdefault(
            unit.feed, {"windows": 0, "done": 0, "todo": 0, "first": None, "last": None}
        )
        view["windows"] += 1
        view["done" if unit in the_plan.every_done else "todo"] += 1
        view["first"] = view["first"] or format_api(unit.window.start)
        view["last"] = format_api(unit.window.end)
    shards = []
    for index in range(shard_count):
        share = assign_shard(the_plan.every, Shard(index=index, count=shard_count), feeds=feeds)
        todo = [u for u in share if u not in the_plan.every_done]
        shards.append({"shard": f"{index}/{shard_count}", "units": len(share), "todo": len(todo)})
    todo_total = sum(v["todo"] for v in views.values())
    return {
        "units": len(the_plan.every),
        "done": len(the_plan.every_done),
        "todo": todo_total,
        # one request per window at least, plus one preflight per shard that has work;
        # windows with more than one page need more
        "min_requests": todo_total + sum(1 for s in shards if s["todo"]),
        "feeds": views,
        "shards": shards,
    }
