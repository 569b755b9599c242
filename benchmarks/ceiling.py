"""The ceiling: the least work that turns the API's pages into zstd Parquet, and the warm pass.

:func:`run_job` fetches a known list of pages with a bare aiohttp loop, ``concurrency``
requests in flight, and for each page does only what any archiver must: decode the
JSON (orjson), build an Arrow table of the feed's columns
(``pa.Table.from_pylist`` with a fixed schema, timestamps parsed vectorised), and
append it to one zstd Parquet file per feed in row groups of 128 Ki rows. No windows,
no paging logic, no retries, no manifest, no ``extra`` column. The page list comes
from the warm pass, so the ceiling even knows in advance where every page starts.
The scenarios give it *the fewest pages*: one query per feed over the whole range
(cut at the harvester's longest span), in pages of the largest size the server applies.

:func:`walk_pages` is that warm pass: it pages through every query once, which makes
the simulator render and cache every page, and returns where the pages are, the rows
of each feed and the page size the server applied (:class:`Walk`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvester.schemas import FEEDS, TIMESTAMP

FEED_PATH = "/api/v2/iocs/feeds/{feed}"
ROW_GROUP_ROWS = 128 * 1024
API_TIME = "%Y-%m-%dT%H:%M:%SZ"
#: What every client asks for unless a scenario filters: every score (a full archive).
EVERY_SCORE = {"confidence": "0", "severity": "0"}


@dataclass(frozen=True)
class Query:
    """One query of a feed over ``[after, before)`` as the API is asked it (API date strings)."""

    feed: str
    after: str
    before: str


def params(
    query: Query, offset: int, limit: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The query string of one page: the filters (every score by default), span and page."""
    return {
        **(EVERY_SCORE if extra is None else extra),
        "after": query.after,
        "before": query.before,
        "limit": str(limit),
        "offset": str(offset),
    }


def feed_url(base_url: str, feed: str) -> str:
    """The URL of ``feed`` under ``base_url``."""
    return base_url.rstrip("/") + FEED_PATH.format(feed=feed)


@dataclass
class Walk:
    """What a warm pass found."""

    pages: list[tuple[str, str, str, int]] = field(default_factory=list)
    """Every page that holds items: ``(feed, after, before, offset)``, sorted."""
    rows: int = 0
    by_feed: dict[str, int] = field(default_factory=dict)
    """Rows per feed (summed over that feed's queries)."""
    page: int = 0
    """The largest ``items_per_page`` the server applied."""

    def fewest_pages(self) -> int:
        """Sum over feeds of ceil(rows / page): the fewest pages that hold the records."""
        size = max(self.page, 1)
        return sum(-(-rows // size) for rows in self.by_feed.values())


async def walk_pages(
    base_url: str,
    key: str,
    queries: Sequence[Query],
    *,
    limit: int,
    extra: Mapping[str, str] | None = None,
    concurrency: int = 16,
    batch: int = 8,
) -> Walk:
    """Page through every query once; return the pages found, the rows and the page size.

    Each query's first page gives the page size; later pages are asked ``batch`` at a
    time until a short page, at most ``concurrency`` requests in flight overall. Every
    page is requested exactly as the clients will request it (pages past the end are
    empty and cheap), so the simulator has them rendered and cached afterwards.
    ``extra`` are the query's filters (every score by default).
    """
    headers = {"Authorization": f"Bearer {key}"}
    walk = Walk(by_feed={q.feed: 0 for q in queries})
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def get(query: Query, offset: int) -> tuple[int, int]:
            async with gate:
                url = feed_url(base_url, query.feed)
                query_string = params(query, offset, limit, extra)
                async with session.get(url, params=query_string) as response:
                    response.raise_for_status()
                    data = orjson.loads(await response.read())["data"]
            return len(data["items"]), int(data["items_per_page"])

        async def one(query: Query) -> None:
            # The first page tells the page size; then `batch` pages are asked at once
            # (a long query under latency would otherwise take pages x latency).
            count, size = await get(query, 0)
            walk.page = max(walk.page, size)
            found = [(0, count)]
            offset = count
            while count == size:
                counts = await asyncio.gather(
                    *(get(query, offset + i * size) for i in range(batch))
                )
                for i, (count, _) in enumerate(counts):
                    found.append((offset + i * size, count))
                    if count < size:
                        break
                offset += batch * size
            for at, n in found:
                if n:
                    walk.pages.append((query.feed, query.after, query.before, at))
                    walk.rows += n
                    walk.by_feed[query.feed] += n

        await asyncio.gather(*(one(q) for q in queries))
    walk.pages.sort()
    return walk


def ceiling_schema(feed: str) -> pa.Schema:
    """The feed's typed columns, with ``timestamp`` as text (parsed after the table is built)."""
    fields = FEEDS[feed].fields
    return pa.schema([pa.field(n, pa.string() if t == TIMESTAMP else t) for n, t in fields])


def to_table(feed: str, items: list[dict[str, Any]]) -> pa.Table:
    """Items -> Arrow with the feed's columns; unknown keys are ignored."""
    table = pa.Table.from_pylist(items, schema=ceiling_schema(feed))
    stamps = pc.strptime(table.column("timestamp"), format=API_TIME, unit="s").cast(TIMESTAMP)
    return table.set_column(0, "timestamp", stamps)


class _FeedFile:
    """One zstd Parquet file per feed, written in row groups from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.lock = asyncio.Lock()

    async def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            if not self.pending:
                return
            batch = pa.concat_tables(self.pending)
            self.pending, self.pending_rows = [], 0
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, batch.schema, compression="zstd")
            await asyncio.to_thread(self.writer.write_table, batch, ROW_GROUP_ROWS)

    async def close(self) -> None:
        await self.flush()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    base, limit, concurrency = job["url"], int(job["limit"]), int(job["concurrency"])
    rate: float | None = job.get("rate")
    extra: dict[str, str] | None = job.get("params")
    out = Path(job["out"])
    files = {feed: _FeedFile(out / f"{feed}.parquet") for feed in {p[0] for p in job["pages"]}}
    queue: asyncio.Queue[tuple[str, str, str, int]] = asyncio.Queue()
    for page in job["pages"]:
        queue.put_nowait(tuple(page))  # type: ignore[arg-type]
    rows = requests = throttled = 0
    next_slot = time.monotonic()
    headers = {"Authorization": f"Bearer {job['key']}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def pace() -> None:
            # Only when the job knows the API's rate (the rate-bound scenario's oracle).
            nonlocal next_slot
            if rate is None:
                return
            now = time.monotonic()
            slot = max(now, next_slot)
            next_slot = slot + 1.0 / rate
            if slot > now:
                await asyncio.sleep(slot - now)

        async def worker() -> None:
            nonlocal rows, requests, throttled
            while not queue.empty():
                feed, after, before, offset = queue.get_nowait()
                query = params(Query(feed, after, before), offset, limit, extra)
                while True:
                    await pace()
                    requests += 1
                    async with session.get(feed_url(base, feed), params=query) as response:
                        body = await response.read()
                        status = response.status
                        wait = response.headers.get("Retry-After")
                    if status == 429 and rate is not None:
                        throttled += 1
                        await asyncio.sleep(float(wait or 1))
                        continue
                    if status != 200:
                        raise RuntimeError(f"ceiling: HTTP {status} for {feed} at {offset}")
                    break
                items = orjson.loads(body)["data"]["items"]
                table = to_table(feed, items)
                rows += table.num_rows
                await files[feed].add(table)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        for handle in files.values():
            await handle.close()
    return {"rows": rows, "client_requests": requests, "client_throttled": throttled}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run the ceiling for ``job`` (url, key, out, limit, concurrency, pages[, rate, params])."""
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = asyncio.run(_run(job))
    result["seconds"] = time.perf_counter() - started
    return result
