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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from harvester import manifest
from harvester.client import ApiClient, Page
from harvester.config import HarvestConfig, Shard
from harvester.errors import (
    ApiUnreachable,
    AuthError,
    ConnectionFailed,
    HarvesterError,
    StorageAccessError,
)
from harvester.lake import WindowWriter
from harvester.paging import page_through
from harvester.ratelimit import AdaptiveRateLimiter
from harvester.retry import RetryPolicy, Sleep
from harvester.schemas import FEEDS, items_to_table
from harvester.secret import Secret, redact
from harvester.storage import Store
from harvester.windows import Window, format_api, plan_windows, query_bounds

log = structlog.get_logger("harvester")


@dataclass(frozen=True, kw_only=True, order=True)
class Unit:
    """One feed over one window: the unit of work, of files and of the manifest."""

    window: Window
    feed: str

    def __str__(self) -> str:
        return f"{self.feed} {self.window}"


def assign_shard(units: list[Unit], shard: Shard) -> list[Unit]:
    """The units of this shard: round-robin over the sorted units, so balanced within one."""
    return [u for i, u in enumerate(sorted(units)) if i % shard.count == shard.index]


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run will do: every unit of this shard, and which are already done."""

    units: tuple[Unit, ...]
    done: frozenset[Unit]
    total_units: int

    @property
    def todo(self) -> list[Unit]:
        """Units still to harvest, oldest window first."""
        return [u for u in self.units if u not in self.done]


async def plan(config: HarvestConfig, store: Store) -> Plan:
    """Plan the run; reads the manifest, makes no API call."""
    windows = plan_windows(config.after, config.before, config.window)
    every = [Unit(window=w, feed=f) for w in windows for f in config.feeds]
    mine = assign_shard(every, config.shard)
    done = set()
    for feed in config.feeds:
        entries = await manifest.load(store, feed)
        manifest.check_grid(feed, windows, entries)
        for unit in mine:
            entry = entries.get(unit.window) if unit.feed == feed else None
            if entry is not None and entry.fingerprint == config.query.fingerprint:
                done.add(unit)
    return Plan(units=tuple(mine), done=frozenset(done), total_units=len(every))


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
        on_unit: Callable[[Unit, FeedSummary], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        self._api_key = api_key
        self._sleep = sleep
        self._clock = clock
        self._on_unit = on_unit
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.result = RunResult(run_id=self.run_id, feeds={f: FeedSummary() for f in config.feeds})

    def stop(self) -> None:
        """Stop taking new units and abandon in-flight ones (their files are discarded)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()

    def _client(self) -> ApiClient:
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
            async with self._client() as client:
                await self._preflight(client, todo[0])
                gate = asyncio.Semaphore(self.config.concurrency)
                try:
                    async with asyncio.TaskGroup() as group:
                        for unit in todo:
                            task = group.create_task(self._guarded(client, gate, unit))
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

    async def _guarded(self, client: ApiClient, gate: asyncio.Semaphore, unit: Unit) -> None:
        summary = self.result.feeds[unit.feed]
        async with gate:
            if self._stopping.is_set():
                return
            started = self._clock()
            try:
                rows, pages = await self._harvest_unit(client, unit)
            except (AuthError, StorageAccessError):
                raise
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    log.warning("window.abandoned", feed=unit.feed, window=str(unit.window))
                    return
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
            if self._on_unit:
                self._on_unit(unit, summary)

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


def describe_plan(the_plan: Plan) -> dict[str, Any]:
    """A JSON-able view of a plan (for ``harvester plan`` and logs)."""
    return {
        "units": len(the_plan.units),
        "done": len(the_plan.done),
        "todo": len(the_plan.todo),
        "total_units": the_plan.total_units,
        "first": format_api(the_plan.units[0].window.start) if the_plan.units else None,
    }
