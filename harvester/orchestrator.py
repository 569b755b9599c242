"""The orchestrator: open the lake, plan from its manifest, harvest spans, commit in groups.

:func:`plan` reads the manifest head (one object; a version 1 lake is migrated first),
then only the partitions of the months the run's range covers, and works out per feed
the windows left to do and this shard's share (:mod:`harvester.planner`).

:class:`Harvest` runs a plan. A fixed pool of workers takes query spans from a
:class:`~harvester.spans.SpanQueue`, each after taking the leases of the (feed, month)
blocks it touches (:mod:`harvester.leases`); it pages through the span
(:mod:`harvester.paging`) and spools the rows (:mod:`harvester.lake.spool`). The
:class:`~harvester.committer.Committer` turns finished spans into day files and
manifest entries every ``--commit-every`` seconds. A span the server refuses as too
long, or whose paging or data goes wrong, is cut in two down to single windows; a span
whose retries run out fails its windows; a refused key, an unwritable lake or a full
disk stop everything at once; anything else is a bug and is not caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import structlog

from harvester import report
from harvester.budget import PageBudget
from harvester.client import ApiClient, Page
from harvester.committer import Committer
from harvester.config import HarvestConfig
from harvester.errors import (
    FATAL,
    ApiUnreachable,
    ConfigError,
    ConnectionFailed,
    DataError,
    HarvesterError,
    PageTooLarge,
    PagingError,
    RequestRejected,
    Shifted,
    StorageError,
    StorageFull,
    TransientError,
    unwrap,
)
from harvester.intervals import Spans
from harvester.lake import days
from harvester.lake.spool import Spool
from harvester.lake.writer import DayWriter
from harvester.leases import Block, Leases
from harvester.manifest import legacy
from harvester.manifest.io import Fenced, Manifest, Versioned
from harvester.manifest.model import Head, MonthSummary, Partition, month_domain, months_between
from harvester.paging import page_through
from harvester.planner import FeedPlan, Plan, shard_share, windows_in
from harvester.ratelimit import AdaptiveRateLimiter
from harvester.report import FeedSummary, RunResult
from harvester.retry import RetryPolicy, Sleep
from harvester.schemas import FEEDS, items_to_table, warm
from harvester.secret import Secret, redact
from harvester.spans import Span, SpanQueue, too_dense
from harvester.staging import Staging, staging_root
from harvester.storage import ABSENT, Store
from harvester.windows import SECOND, floor_to, format_api, parse_api, plan_windows

if TYPE_CHECKING:
    from harvester.iceberg.ancestry import Ancestry

log = structlog.get_logger("harvester")

RESTARTS = 2
"""Times a span starts again when records move under its paging, before it is cut."""


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _instant(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def open_lake(
    manifest: Manifest, config: HarvestConfig, *, migrate: bool = True
) -> Head | None:
    """The lake's head (None for a new lake), migrating a version 1 lake first.

    Refuses a lake whose window size or table format differs from the run's: two cuts
    of the same time would hold records twice. With ``migrate=False`` (``status``,
    ``plan``), a version 1 lake is read into a head in memory and nothing is written.
    """
    head, expect = await manifest.read_head()
    if head is None:
        keys = await legacy.legacy_keys(manifest.store)
        if keys:
            if migrate:
                head = await legacy.migrate(manifest, keys, table_format=config.table_format)
            else:
                head, _ = await legacy.build(manifest.store, keys, table_format=config.table_format)
        elif expect is not ABSENT:
            head = await rebuild_head(manifest, config) if migrate else None
    elif head.legacy == "cleanup" and migrate:
        head = await legacy.finish_cleanup(manifest, head)
    if head is not None:
        step = int(config.window.total_seconds())
        if head.window != step:
            raise ConfigError(
                f"the lake at {manifest.store.url()} was built with {head.window // 60}-minute "
                f"windows, not --window {int(step // 60)}m; re-run with the --window the "
                "lake was built with, or use a new --out"
            )
        if head.table_format != config.table_format:
            raise ConfigError(
                f"the lake at {manifest.store.url()} holds {head.table_format} tables; "
                f"--table-format {config.table_format} cannot be mixed into it: use "
                f"--table-format {head.table_format}, or a new --out"
            )
    return head


async def rebuild_head(manifest: Manifest, config: HarvestConfig) -> Head:
    """A new head from every partition (the old head was damaged): one listing, read all."""
    parts = [(v.part, v.version) for v in await manifest.all_partitions() if v.version]
    step = int(config.window.total_seconds())

    def rebuild(_: Head | None) -> Head:
        return Head.rebuilt(parts, window=step, table_format=config.table_format)

    log.warning("manifest.head_rebuilt", partitions=len(parts))
    return await manifest.update_head(rebuild)


async def plan(config: HarvestConfig, store: Store, *, write: bool = False) -> Plan:
    """Plan the run from the manifest; no API call. ``write`` allows a migration."""
    manifest = Manifest(store)
    head = await open_lake(manifest, config, migrate=write)
    step = int(config.window.total_seconds())
    fingerprint = config.query.fingerprint
    feeds: dict[str, FeedPlan] = {}
    current = await _snapshots(config) if head is not None else None
    behind: list[tuple[Partition, str, MonthSummary]] = []
    for feed in config.feeds:
        after = _epoch(config.after) if config.after else None
        if config.since_last:
            resumed = head.resume_point(feed, fingerprint, after) if head else after
            if resumed is None:
                raise ConfigError(
                    f"--since-last: the lake has no complete {feed} window with this query "
                    "yet; pass --after for the first run"
                )
            after = resumed
        assert after is not None
        before = _epoch(config.before)
        again = Spans()
        if config.lookback:
            # Late records: complete windows ending within --lookback of before, again.
            back = int(floor_to(config.before - config.lookback, config.window).timestamp())
            again = Spans.one(back, before)
            after = min(after, back)
        if after >= before:
            log.info("feed.up_to_date", feed=feed, until=format_api(_instant(after)))
            feeds[feed] = FeedPlan(feed=feed, planned=Spans(), done=Spans(), todo=Spans())
            continue
        _check_grid(after, before, config)
        planned = Spans.one(after, before)
        done = Spans()
        complete = planned if config.force else Spans()
        if not config.force and head is not None:
            known = head.feed(feed).months
            months = [m for m in months_between(after, before) if m in known]
            # A version 1 lake planned without migrating: its head and partitions are in
            # memory only (no version), and the head's complete windows are theirs.
            held = [m for m in months if not known[m].version]
            legacy_done = head.feed(feed).complete.get(fingerprint, Spans())
            done = legacy_done & Spans.of(month_domain(m, step) for m in held)
            complete = done
            months = [m for m in months if known[m].version]
            for month, read in (await manifest.read_partitions(feed, months)).items():
                done = done | _done(read.part, fingerprint, current, feed)
                complete = complete | read.part.complete(fingerprint)
                if read.version not in (None, known[month].version):
                    behind.append((read.part, read.version, known[month]))
            done = (done & planned) - again
        todo = shard_share(
            planned - done, feed=feed, shard=config.shard, feeds=config.feeds, step=step
        )
        feeds[feed] = FeedPlan(
            feed=feed,
            planned=planned,
            done=done,
            todo=todo,
            again=again,
            stale=(complete & planned) - done,
        )
    if behind and write:
        await _heal_head(manifest, behind)
    return Plan(step=step, shard=config.shard, feeds=feeds)


async def _snapshots(config: HarvestConfig) -> dict[str, Ancestry] | None:
    """For an Iceberg lake, each table's ancestry; None for the Hive layout."""
    if config.table_format != "iceberg":
        return None
    from harvester.iceberg.sink import open_ancestries

    return await open_ancestries(config) or {}


def _done(
    part: Partition, fingerprint: str, snapshots: dict[str, Ancestry] | None, feed: str
) -> Spans:
    """The windows of ``part`` complete with this query (and, in Iceberg, still current)."""
    if snapshots is None:
        return part.complete(fingerprint)
    ancestry = snapshots.get(feed)
    return Spans.of(
        (w.start, w.end)
        for w in part.windows.values()
        if w.fingerprint == fingerprint
        and (
            w.snapshot is None
            or (ancestry is not None and ancestry.is_current(w.snapshot, w.sequence or 0))
        )
    )


async def _heal_head(manifest: Manifest, stale: list[tuple[Partition, str, MonthSummary]]) -> None:
    """Catch the head up with partitions written after it (a run killed in between).

    A run with nothing left to do commits nothing, so without this the head -- what
    ``status`` and ``--since-last`` read -- would stay behind. A month the head has
    changed since it was read is left alone: its writer recorded it.
    """

    def change(head: Head | None) -> Head:
        assert head is not None
        for part, version, seen in stale:
            if head.feed(part.feed).months.get(part.month) == seen:
                head = head.with_partition(part, version)
        return head

    log.warning("manifest.head_healed", months=len(stale))
    await manifest.update_head(change)


def _check_grid(after: int, before: int, config: HarvestConfig) -> None:
    start, end = _instant(after), _instant(before)
    if floor_to(start, config.window) != start or floor_to(end, config.window) != end:
        plan_windows(start, end, config.window)  # raises the one-line error with a hint


class Resize(Exception):
    """Internal: a span's first page showed it far denser than carved for."""

    def __init__(self, density: float, page: int) -> None:
        super().__init__(f"{density:.3g} items/s")
        self.density = density
        self.page = page


class Harvest:
    """One run of the harvester."""

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
        self.step = int(config.window.total_seconds())
        self._api_key = api_key
        self._sleep = sleep
        self._clock = clock
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.result = RunResult(run_id=self.run_id, feeds={f: FeedSummary() for f in config.feeds})
        self.manifest = Manifest(store, sleep=sleep)
        self._held: dict[str, Spans] = {}
        self._budget = PageBudget(limit=config.page_budget)
        self._planned_at = time.time()
        """Wall-clock time before the plan was read (windows completed since are fresh)."""
        self._rechecked: dict[Block, Spans] = {}
        self._elsewhere: dict[str, Spans] = {}
        self._recheck_lock = asyncio.Lock()
        self._stale: dict[str, Spans] = {}
        """Per feed, windows complete when planned that this run harvests anyway."""

    def snapshot(self) -> dict[str, FeedSummary]:
        """Live per-feed totals, request counters included (for a progress display)."""
        return {feed: summary.copy() for feed, summary in self.result.feeds.items()}

    def stop(self) -> None:
        """Stop taking new spans and abandon those in flight (their rows are discarded)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()

    async def execute(self) -> RunResult:
        """Plan from the lake's manifest (migrating an old lake), then harvest what is left.

        With ``--repair``, the lake is verified first: windows whose files are missing or
        damaged become incomplete, so this very run harvests them again.
        """
        if self.config.repair:
            from harvester.verify import verify

            await verify(self.store, feeds=self.config.feeds, repair=True, run_id=self.run_id)
        self._planned_at = time.time()
        return await self.run(await plan(self.config, self.store, write=True))

    async def run(self, the_plan: Plan) -> RunResult:
        """Harvest every window the plan has left to do."""
        started = self._clock()
        started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        todo = the_plan.todo
        self._stale = {feed: fp.stale for feed, fp in the_plan.feeds.items()}
        for feed, fp in the_plan.feeds.items():
            summary = self.result.feeds[feed]
            share = shard_share(
                fp.planned,
                feed=feed,
                shard=self.config.shard,
                feeds=self.config.feeds,
                step=self.step,
            )
            summary.windows = windows_in(share, self.step)
            summary.skipped = summary.windows - windows_in(fp.todo, self.step)
        log.info(
            "run.start",
            run_id=self.run_id,
            windows=sum(s.windows for s in self.result.feeds.values()),
            todo=sum(windows_in(s, self.step) for s in todo.values()),
            skipped=sum(s.skipped for s in self.result.feeds.values()),
            shard=str(self.config.shard),
        )
        if not todo:
            return self._finish(started)
        try:
            await self._harvest(todo)
        except StorageFull:
            # The disk is full, but the report may still fit: keep the run on record.
            with contextlib.suppress(StorageError):
                await self._report(started, started_at)
            raise
        return await self._report(started, started_at)

    async def _harvest(self, todo: dict[str, Spans]) -> None:
        # pyarrow's first conversion imports what it needs (pandas, when installed: some
        # 0.2 s): a thread does it while the run starts, not the event loop on its first
        # page. A page converted sooner waits for it, as it would have anyway.
        warming = asyncio.create_task(asyncio.to_thread(warm))
        try:
            await self._harvest_todo(todo)
        finally:
            await warming

    async def _harvest_todo(self, todo: dict[str, Spans]) -> None:
        await self.store.check_writable()
        queue = SpanQueue(
            todo,
            step=self.step,
            max_span=int(self.config.max_span.total_seconds()),
            page=self.config.limit,
        )
        async with self._new_client() as client:
            first = queue.take()
            assert first is not None
            queue.give_back(first)
            # Before anything is written: a refused key or a dead URL leave no trace.
            await self._preflight(client, first)
            await self.manifest.update_head(
                lambda head: head or Head(table_format=self.config.table_format, window=self.step)
            )
            leases = Leases(self.store, self.run_id, ttl=self.config.lease_ttl, sleep=self._sleep)
            staging = Staging(staging_root(self.store), leases.owner)
            folder = await staging.open()
            sink = None
            if self.config.table_format == "iceberg":
                from harvester.iceberg.sink import IcebergSink

                sink = IcebergSink(self.config, self.store, folder)
                await sink.open()
            committer = Committer(
                manifest=self.manifest,
                writer=DayWriter(self.store, folder),
                sink=sink,
                leases=leases,
                todo=todo,
                step=self.step,
                fingerprint=self.config.query.fingerprint,
                query=self.config.query.describe(),
                run_id=self.run_id,
                summaries=self.result.feeds,
                failures=self.result.failures,
                commit_every=self.config.commit_every,
                clock=self._clock,
            )
            try:
                await self._work(client, queue, leases, staging, committer, folder)
                await self._settle_held(leases)
            finally:
                with contextlib.suppress(HarvesterError):
                    await leases.release_all()
                await staging.close()

    async def _work(
        self,
        client: ApiClient,
        queue: SpanQueue,
        leases: Leases,
        staging: Staging,
        committer: Committer,
        folder: Path,
    ) -> None:
        """Run the workers, the committer and the lease keeper until all is committed."""
        work = _Work(queue)
        try:
            with _rare_collections:
                async with asyncio.TaskGroup() as group:
                    done = asyncio.Event()
                    committing = group.create_task(committer.run())
                    keeping = group.create_task(self._keep_alive(leases, staging, committer, done))
                    workers = [
                        group.create_task(self._worker(client, work, leases, committer, folder))
                        for _ in range(self.config.concurrency)
                    ]
                    for task in workers:
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    await asyncio.wait(workers)
                    # Both end after what they are doing: a commit or a lease write is
                    # never cut half way. The last commit is made before the keeper
                    # stops, so the leases stay renewed until it is recorded.
                    committer.close()
                    await committing
                    await committer.flush()
                    done.set()
                    await keeping
        except BaseExceptionGroup as group_error:
            raise unwrap(group_error) from None

    async def _keep_alive(
        self, leases: Leases, staging: Staging, committer: Committer, done: asyncio.Event
    ) -> None:
        """Renew the leases, mark the staging folder alive, give back finished blocks."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), min(leases.ttl / 3, 10.0))
            if done.is_set():
                return
            await leases.renew()
            staging.touch()
            for block in committer.finished_blocks():
                await leases.release(block)

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
            max_page_bytes=config.max_page_bytes,
            counters={feed: s.counters for feed, s in self.result.feeds.items()},
            sleep=self._sleep,
        )

    def _params(self, span: Span) -> dict[str, str]:
        """The query string of every page of ``span``, less ``limit`` and ``offset``.

        ``after`` is one second early: nobody knows whether the API's ``after`` is
        inclusive, and a record at exactly ``start`` must come back either way.
        """
        after = format_api(_instant(span.start) - SECOND)
        before = format_api(_instant(span.end))
        return {**self.config.query.params(), "after": after, "before": before}

    async def _preflight(self, client: ApiClient, span: Span) -> None:
        """One small request first: a dead URL, a refused key or a bad query fail fast."""
        quick = RetryPolicy(attempts=3, timeout=30.0, initial=0.2, maximum=2.0)
        window = Span(feed=span.feed, start=span.start, end=span.start + self.step)
        try:
            params = {**self._params(window), "limit": "1", "offset": "0"}
            await client.fetch_page(span.feed, params, policy=quick)
        except ConnectionFailed as exc:
            raise ApiUnreachable(
                f"cannot reach the API at {self.config.base_url} ({exc}); check --base-url "
                "and the network"
            ) from exc
        except RequestRejected as exc:
            raise ConfigError(
                f"the API rejects this query ({exc}); check --filter, --sample, --ioc and "
                "the other query flags"
            ) from exc
        except (TransientError, PageTooLarge) as exc:
            # The API answered: it is reachable and took the key. Let the spans
            # themselves retry and, if they must, fail on their own.
            log.warning("preflight.failed", feed=span.feed, error=type(exc).__name__)

    async def _worker(
        self,
        client: ApiClient,
        work: _Work,
        leases: Leases,
        committer: Committer,
        folder: Path,
    ) -> None:
        """Take spans one by one until none is left or the run is stopping."""
        while not self._stopping.is_set():
            span = await work.take()
            if span is None:
                return
            try:
                await self._one(client, work, span, leases, committer, folder)
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    log.warning("span.abandoned", feed=span.feed, span=_label(span))
                    return
                raise
            finally:
                work.release()

    async def _one(
        self,
        client: ApiClient,
        work: _Work,
        span: Span,
        leases: Leases,
        committer: Committer,
        folder: Path,
    ) -> None:
        queue = work.queue
        # The months its windows *start* in: a window longer than a day may end in the
        # next month, whose lease it does not need (nor must wait for).
        months = months_between(span.start, span.end - self.step + 1)
        taken = await leases.acquire_many((span.feed, month) for month in months)
        blocked = [month for month in months if not taken[(span.feed, month)]]
        if blocked:
            held = Spans.of(month_domain(m, self.step) for m in blocked)
            queue.give_back(span)
            left = queue.remaining(span.feed) & held
            queue.drop(span.feed, held)
            committer.left(span.feed, held)
            self._held[span.feed] = self._held.get(span.feed, Spans()) | left
            for month in blocked:
                log.warning(
                    "span.held",
                    feed=span.feed,
                    month=month,
                    holder=str(leases.holders.get((span.feed, month), "another run")),
                )
            return
        meanwhile = Spans()
        for month in months:
            meanwhile = meanwhile | await self._recheck((span.feed, month), leases, work, committer)
        done_meanwhile = meanwhile.clip(span.start, span.end)
        if done_meanwhile:
            queue.give_back(span)  # to be carved again from what is left of it
            self._skip_done(span.feed, done_meanwhile, work, committer)
            return
        summary = self.result.feeds[span.feed]
        started = self._clock()
        try:
            spool, pages = await self._harvest_span(client, span, queue, folder)
        except Resize as resize:
            queue.learn(span.feed, density=resize.density, page=resize.page)
            queue.give_back(span)
            return
        except FATAL:
            raise
        except (RequestRejected, PagingError, DataError) as exc:
            if span.windows(self.step) > 1:
                if isinstance(exc, RequestRejected):
                    queue.refused(span)  # too long, or too deep: carved shorter from now on
                else:
                    queue.redo(span.halves(self.step))
                log.warning(
                    "span.split",
                    feed=span.feed,
                    span=_label(span),
                    error=type(exc).__name__,
                    reason=redact(str(exc)),
                )
                return
            queue.done(span)
            committer.failed(span, exc)
            return
        except HarvesterError as exc:
            queue.done(span)
            committer.failed(span, exc)
            return
        finally:
            summary.seconds += self._clock() - started
        summary.pages += pages
        queue.learn(span.feed, density=max(spool.rows, 0.5) / span.length)
        queue.done(span)
        committer.finished(span, spool)

    async def _harvest_span(
        self, client: ApiClient, span: Span, queue: SpanQueue, folder: Path
    ) -> tuple[Spool, int]:
        """Page through ``span`` into a spool; start again if records move underneath."""
        feed = FEEDS[span.feed]
        query = self._params(span)
        owned = Spans.one(span.start, span.end)
        for attempt in range(RESTARTS + 1):
            name = f"{span.feed}-{span.start}-{uuid.uuid4().hex[:8]}.arrow"
            spool = Spool(folder / name, feed.schema)
            first = True

            async def fetch(offset: int, limit: int) -> Page:
                params = {**query, "limit": str(limit), "offset": str(offset)}
                booking = await self._budget.reserve(span.feed)
                try:
                    page = await client.fetch_page(span.feed, params)
                except BaseException:
                    self._budget.release(booking)
                    raise
                self._budget.settle(span.feed, booking, page.size)
                self._budget.hold_until_gone(page, booking)
                return page

            async def on_page(page: Page, spool: Spool = spool) -> None:
                nonlocal first
                # Inline, not in a thread: the conversion holds the GIL throughout.
                rows = page.handed_rows()
                if rows is not None:
                    table = rows  # a big page, converted as it was decoded
                else:
                    items = page.handed_items()
                    try:
                        table = items_to_table(feed, items)
                    except DataError:
                        # The second asked for before the span belongs to the window
                        # before it: a record there that cannot be stored is its failure.
                        table = items_to_table(feed, [i for i in items if _inside(i, span)])
                if first:
                    first = False
                    self._probe(span, page, table, queue)
                try:
                    spool.append(days.select(table, owned))
                except OSError as exc:  # a full disk, say: the spool is on the staging disk
                    raise self.store.staging_error(exc, spool.path) from exc

            try:
                paged = await page_through(
                    fetch,
                    limit=self.config.limit,
                    prefetch=self.config.prefetch,
                    on_page=on_page,
                    covered=lambda page: covered_share(page, span),
                )
            except Shifted:
                spool.discard()
                log.warning("span.shifted", feed=span.feed, span=_label(span), attempt=attempt)
                continue
            except BaseException:
                spool.discard()
                raise
            try:
                spool.close()
            except OSError as exc:
                spool.discard()
                raise self.store.staging_error(exc, spool.path) from exc
            return spool, paged.pages
        raise PagingError(
            f"records kept being added while {span.feed} {_label(span)} was paged "
            f"({RESTARTS + 1} tries); it is split into shorter queries"
        )

    def _probe(self, span: Span, page: Page, table: Any, queue: SpanQueue) -> None:
        """The first page of a span: learn the page size, and the density if it is full."""
        queue.learn(span.feed, density=queue.density(span.feed) or 0.0, page=page.items_per_page)
        if page.count < page.items_per_page or span.windows(self.step) < 2:
            return
        oldest = pc.min(days.seconds(table)).as_py()
        if oldest is None or oldest <= span.start or oldest >= span.end:
            return  # odd stamps: cannot tell
        density = page.count / (span.end - oldest)
        if too_dense(span, density=density, page=page.items_per_page):
            raise Resize(density, page.items_per_page)

    async def _recheck(
        self, block: Block, leases: Leases, work: _Work, committer: Committer
    ) -> Spans:
        """Windows of ``block`` that another run completed after this run planned.

        Read once per block, when the lease was taken from another run (empty
        otherwise); the first worker to ask drops them from the queue, and every worker
        drops them from the span it holds. Without this, a run that takes a block another
        run has just finished and released would harvest it all again. A ``--force``
        run skips only what was completed after it planned: that is as fresh as its own
        harvest would be.
        """
        async with self._recheck_lock:
            known = self._rechecked.get(block)
            if known is not None:
                return known
            fresh = Spans()
            if block in leases.taken_over:
                feed = block[0]
                current = await self._fence(block, leases)
                fresh = self._complete(current)
                self._skip_done(feed, work.queue.remaining(feed) & fresh, work, committer)
                await self._adopt_month(current)
            self._rechecked[block] = fresh
            return fresh

    async def _fence(self, block: Block, leases: Leases) -> Versioned:
        """The block's partition; for a seized lease, first stamped with this run's token.

        The run whose lease expired may be alive (a stalled process, a clock that
        disagrees) and about to commit. Once the partition carries the newer token, its
        partition write is refused (:class:`~harvester.manifest.io.Fenced`), so any day
        file it writes stays unrecorded, and this run may replace it. Without the fence,
        it could record a file after this run read the partition, and this run would
        replace that file taking it for a killed run's leftover: rows lost.
        """
        feed, month = block
        if block not in leases.seized:
            return await self.manifest.read_partition(feed, month)
        try:
            return await self.manifest.update_partition(
                feed, month, lambda part: part, token=leases.token(block)
            )
        except Fenced:
            leases.lost.add(block)  # a newer run has it already: commit nothing of it
            return await self.manifest.read_partition(feed, month)

    async def _adopt_month(self, current: Versioned) -> None:
        """Record in the head a month a run wrote the partition of, and then died.

        Killed between writing a new month's partition and the head, a run leaves the
        head without that month; nothing else would ever add it (the plan reads only
        the months the head knows), so ``status`` and ``--since-last`` would miss those
        windows for good. Only a month the head does not know at all is added: one it
        knows is the plan's to heal, and a newer writer's summary is never undone.
        """
        part, version = current.part, current.version
        if version is None or not part.windows:
            return

        def change(head: Head | None) -> Head:
            assert head is not None
            if part.month in head.feed(part.feed).months:
                return head
            return head.with_partition(part, version)

        head, _ = await self.manifest.read_head()
        if head is not None and part.month not in head.feed(part.feed).months:
            log.warning("manifest.head_healed", months=1, feed=part.feed, month=part.month)
            await self.manifest.update_head(change)

    def _complete(self, current: Versioned) -> Spans:
        """The windows of ``current`` complete as this run wants them.

        Complete with this run's query; for the windows the plan found complete and
        harvests anyway (``--force``, ``--lookback``, an Iceberg rollback), also completed
        after this run planned (``completed_at`` is whole seconds, rounded down: ">" is
        "surely after"), since their earlier completion is what it must redo.
        """
        stale = self._stale.get(current.part.feed, Spans())
        return Spans.of(
            (w.start, w.end)
            for w in current.part.windows.values()
            if w.fingerprint == self.config.query.fingerprint
            and (w.completed_at > self._planned_at or not stale.containing(w.start))
        )

    def _skip_done(self, feed: str, spans: Spans, work: _Work, committer: Committer) -> None:
        """``spans`` (still to do) were completed by another run meanwhile: not ours now.

        Counted once each, however often a worker hands some of them back.
        """
        work.queue.drop(feed, spans)
        committer.left(feed, spans)
        before = self._elsewhere.get(feed, Spans())
        new = spans - before
        if new:
            self._elsewhere[feed] = before | spans
            self.result.feeds[feed].done += windows_in(new, self.step)
            log.info("span.done_elsewhere", feed=feed, windows=windows_in(new, self.step))

    async def _settle_held(self, leases: Leases) -> None:
        """Windows another run held: done by now, or left (exit 75, said by the CLI)."""
        if not self._held:
            return
        holders: set[str] = set()
        for feed, spans in self._held.items():
            months = months_between(spans.first or 0, spans.last or 0)
            parts = await self.manifest.read_partitions(feed, months)
            done = Spans()
            for current in parts.values():
                done = done | self._complete(current)
            left = spans - done
            self.result.feeds[feed].held = windows_in(left, self.step)
            self.result.feeds[feed].done += windows_in(spans & done, self.step)
            for month in months:
                if left.clip(*month_domain(month, self.step)):
                    holder = leases.holders.get((feed, month))
                    holders.add(str(holder) if holder else "another run")
        self.result.held_by = sorted(holders)

    def _finish(self, started: float) -> RunResult:
        self.result.interrupted = self._stopping.is_set()
        self.result.seconds = self._clock() - started
        return self.result

    async def _report(self, started: float, started_at: str) -> RunResult:
        result = self._finish(started)
        ended_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        built = report.build_report(self.config, result, started_at=started_at, ended_at=ended_at)
        key = await report.write_report(self.store, built)
        view = report.run_view(built)
        await self.manifest.update_head(
            lambda head: (
                head or Head(table_format=self.config.table_format, window=self.step)
            ).with_run(view, feeds=self.config.feeds)
        )
        log.info("run.report", key=key)
        return result


class _Work:
    """The span queue shared by the workers, and when to stop waiting on it."""

    def __init__(self, queue: SpanQueue) -> None:
        self.queue = queue
        self.busy = 0
        self._changed = asyncio.Event()

    async def take(self) -> Span | None:
        """The next span; None once nothing is left and nothing in flight can give back."""
        while True:
            span = self.queue.take()
            if span is not None:
                self.busy += 1
                return span
            if self.busy == 0:
                self._changed.set()  # let the other idle workers see it too
                return None
            # No await between the check and the wait: a release cannot slip between.
            self._changed.clear()
            await self._changed.wait()

    def release(self) -> None:
        """A span is out of a worker's hands (finished, failed, given back or cut)."""
        self.busy -= 1
        self._changed.set()


def covered_share(page: Page, span: Span) -> float | None:
    """How much of ``span`` the pages up to ``page`` have covered, if items are newest first.

    The oldest item of the page bounds what is left; None when the page does not look
    newest first or its stamps are not the documented form (paging then just fetches
    ahead as deep as it may).
    """
    try:
        newest = int(parse_api(page.first["timestamp"]).timestamp())  # type: ignore[index]
        oldest = int(parse_api(page.last["timestamp"]).timestamp())  # type: ignore[index]
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    if not span.start <= oldest <= newest < span.end:
        return None
    return max((span.end - oldest) / (span.end - span.start), 1e-9)


def _inside(item: Any, span: Span) -> bool:
    """Whether an item's stamp lies in ``span`` (True when it cannot be told)."""
    try:
        stamp = int(parse_api(item["timestamp"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return True
    return span.start <= stamp < span.end


def _label(span: Span) -> str:
    return f"[{format_api(_instant(span.start))}, {format_api(_instant(span.end))})"


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
