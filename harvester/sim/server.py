"""The Threat Grid v2 IOC feed API over real HTTP, serving a :class:`~harvester.sim.data.Dataset`.

``GET /api/v2/iocs/feeds/{feed}`` checks the key (``Authorization: Bearer`` or
``api_key``), validates every parameter as strictly as the real API is said to (exact
dates, no unknown parameters), and pages newest first through ``Dataset.select`` in the
documented envelope. :class:`Faults` injects what a harvester must survive: 429 with
``Retry-After``, 5xx, HTML pages, dropped connections, truncated bodies, envelopes
without items, slow pages, a server that ignores ``offset``, records inserted at the head
of a query while it is paged, bodies that never end and bodies that trickle in.
:class:`ServerOptions` can also refuse, with a 400, time ranges longer than ``max_span``
and offsets deeper than ``max_offset`` (limits nobody documents for the real API).
Records added to the dataset while the server runs (``add_records``, or the insert fault)
are served at once: the server's caches of a feed are dropped when its records change.
``GET /_sim/stats`` and ``POST /_sim/reset-stats`` (no auth) expose the counters.

Run it as :class:`Simulator` (async context manager), :class:`SimulatorThread` (own
thread and loop, for tests and the demo) or :func:`serve` (blocking, for the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import math
import random
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any, Generic, TypeVar

import orjson
import structlog
from aiohttp import web

from harvester.schemas import FEEDS
from harvester.sim.data import DEFAULT_SCORE, Dataset, DatasetSpec, dumps, query_bounds
from harvester.windows import API_FORMAT

FEED_PATH = "/api/v2/iocs/feeds/{feed}"
JSON_TYPE = "application/json;charset=utf-8"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_COMMON = {
    "api_key",
    "after",
    "before",
    "confidence",
    "severity",
    "ioc",
    "org_only",
    "user_only",
    "sample",
    "limit",
    "offset",
}
_HTML = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>"
)
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_STREAM_CHUNK = 64 * 1024  # bytes per write of an endless body
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Misbehaviour to inject, drawn from a RNG seeded with ``seed``.

    ``rate_limit`` (requests/s, token bucket with a burst of one second) answers 429 with
    ``Retry-After``. ``error_rate``, ``drop_rate``, ``truncate_rate``, ``html_rate``,
    ``missing_items_rate``, ``endless_body_rate`` and ``trickle_rate`` exclude each other
    per request, so their sum must be <= 1; ``slow_rate`` is drawn on its own. Only
    ``faulty_feeds`` are affected (all if empty); ``fail_always`` feeds answer every valid
    request with 503.

    ``endless_body_rate``: a 200 whose chunked body (no Content-Length) is the page's
    envelope up to ``"items":[`` followed by the page's items, repeated forever, until the
    client hangs up. ``trickle_rate``: the page's valid 200 body, with its Content-Length,
    sent at ``trickle_bytes_per_second``, so a client's total timeout fires mid-body.

    ``insert_while_paging`` > 0: after each full page served at an offset > 0 (a page
    with a next one to ask for), that many new records are added to the dataset at the
    head of the page's query (:meth:`~harvester.sim.data.Dataset.insert_at_head`), so
    every later offset shifts; at most ``insert_limit`` records over the server's life
    (``reset_stats`` does not renew it), so runs end.
    """

    seed: int = 1
    rate_limit: float | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    html_rate: float = 0.0
    missing_items_rate: float = 0.0
    repeat_pages: bool = False
    faulty_feeds: tuple[str, ...] = ()
    fail_always: tuple[str, ...] = ()
    endless_body_rate: float = 0.0
    trickle_rate: float = 0.0
    trickle_bytes_per_second: float = 1000.0
    insert_while_paging: int = 0
    insert_limit: int = 1000

    def __post_init__(self) -> None:
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be > 0 requests/s, or None")
        rates = [rate for _, rate in self.exclusive()]
        if not all(0.0 <= r <= 1.0 for r in [*rates, self.slow_rate]) or sum(rates) > 1.0:
            raise ValueError("fault rates must be within 0..1, the exclusive ones sum <= 1")
        unknown = sorted(set(self.faulty_feeds + self.fail_always) - set(FEEDS))
        if unknown:
            raise ValueError(f"unknown feeds {unknown}")
        if not self.trickle_bytes_per_second > 0:
            raise ValueError(
                f"trickle_bytes_per_second must be > 0, not {self.trickle_bytes_per_second!r}"
            )
        for name in ("insert_while_paging", "insert_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")

    def exclusive(self) -> tuple[tuple[str, float], ...]:
        """The mutually exclusive fault kinds and their probabilities, in drawing order."""
        return (
            ("error", self.error_rate),
            ("drop", self.drop_rate),
            ("truncate", self.truncate_rate),
            ("html", self.html_rate),
            ("missing_items", self.missing_items_rate),
            ("endless_body", self.endless_body_rate),
            ("trickle", self.trickle_rate),
        )


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """How the simulated API behaves. ``limit`` is clamped to ``max_limit``.

    ``max_span``: a request whose ``before - after`` (after the API's defaults for a
    missing bound) is longer gets a 400, "The requested time range is too long; ...".
    ``max_offset``: a request whose ``offset`` is larger gets a 400. Both are off (None)
    by default; the real API's limits, if any, are undocumented.
    """

    api_key: str = "sim-key"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    max_limit: int = 1000
    default_limit: int = 1000
    after_inclusive: bool = True
    before_inclusive: bool = False
    latency: float = 0.0
    faults: Faults = field(default_factory=Faults)
    max_span: timedelta | None = None
    max_offset: int | None = None

    def __post_init__(self) -> None:
        span = self.max_span
        if span is not None and (not isinstance(span, timedelta) or span <= timedelta(0)):
            raise ValueError(f"max_span must be a positive timedelta or None, not {span!r}")
        deep = self.max_offset
        if deep is not None and (not isinstance(deep, int) or isinstance(deep, bool) or deep < 0):
            raise ValueError(f"max_offset must be an integer >= 0 or None, not {deep!r}")


@dataclass(kw_only=True)
class SimStats:
    """What the feed endpoint answered (``/_sim`` calls are not counted).

    ``faults`` counts injected faults by kind: ``error``, ``drop``, ``truncate``, ``html``,
    ``missing_items``, ``slow``, ``repeat_pages`` (pages served from offset 0 instead of
    the one asked for), ``fail_always``, ``endless_body``, ``trickle``, ``insert`` (pages
    after which records were inserted; ``rows_inserted`` counts the records), and the
    400s of the options ``max_span`` and ``max_offset``. A dropped connection has no
    status. ``rows_served`` counts the rows of complete pages only.
    """

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_feed: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    rows_served: int = 0
    rows_inserted: int = 0

    def as_json(self) -> dict[str, Any]:
        """The counters as JSON-ready data (status codes become string keys)."""
        return {**asdict(self), "by_status": {str(k): v for k, v in self.by_status.items()}}


class _LRU(Generic[_K, _V]):
    """A dict that forgets its least recently used entries beyond a total ``size``."""

    def __init__(self, budget: int, size: Callable[[_V], int]) -> None:
        self._data: OrderedDict[_K, _V] = OrderedDict()
        self._budget, self._size, self._used = budget, size, 0

    def get(self, key: _K) -> _V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = value
        self._used += self._size(value)
        while self._used > self._budget and len(self._data) > 1:
            self._used -= self._size(self._data.popitem(last=False)[1])

    def drop(self, stale: Callable[[_K], bool]) -> None:
        """Forget every entry whose key is ``stale``."""
        for key in [key for key in self._data if stale(key)]:
            self._used -= self._size(self._data.pop(key))


class _BadRequest(Exception):
    """A parameter is invalid; the message goes into the 400 envelope."""


_Query = tuple[Any, ...]  # hashable: feed, after, before, the filters, restrictions


class _Service:
    """The request handlers, their caches and counters; lives on one event loop."""

    def __init__(self, options: ServerOptions, dataset: Dataset) -> None:
        self.options, self.dataset, self.stats = options, dataset, SimStats()
        self._ids = itertools.count(584649)
        self._rng = random.Random(options.faults.seed)
        self._tokens, self._stamp = max(1.0, options.faults.rate_limit or 1.0), time.monotonic()
        self._selections: _LRU[_Query, list[dict[str, Any]]] = _LRU(5_000_000, len)
        self._pages: _LRU[tuple[Any, ...], bytes] = _LRU(256 * 2**20, len)
        # What the caches were built from: compared once per request, purged on change.
        self._generation = dataset.generation
        self._versions = {feed: dataset.version(feed) for feed in FEEDS}
        # Records the insert fault may still add; 0 when it is off, so a plain page pays
        # one truth test for it.
        faults = options.faults
        self._insert_budget = faults.insert_limit if faults.insert_while_paging else 0
        self.open_streams = 0  # endless or trickling bodies still being sent

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(FEED_PATH, self.feed)
        app.router.add_get("/_sim/stats", self.get_stats)
        app.router.add_post("/_sim/reset-stats", self.reset_stats)
        return app

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(200, orjson.dumps(self.stats.as_json()))

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats = SimStats()
        return _json(200, b'{"ok":true}')

    async def feed(self, request: web.Request) -> web.StreamResponse:
        feed, stats = request.match_info["feed"], self.stats
        stats.requests += 1
        stats.by_feed[feed] = stats.by_feed.get(feed, 0) + 1
        response = await self._answer(request, feed)
        if response is None:
            return web.Response()  # the transport is gone; aiohttp discards this quietly
        stats.by_status[response.status] = stats.by_status.get(response.status, 0) + 1
        return response

    async def _answer(self, request: web.Request, feed: str) -> web.StreamResponse | None:
        faults = self.options.faults
        wait = self._take_token()
        if wait:
            self.stats.rate_limited += 1
            return self._error(429, "Rate limit exceeded.", {"Retry-After": str(math.ceil(wait))})
        key = self.options.api_key
        if request.headers.getall("Authorization", []) != [
            f"Bearer {key}"
        ] and request.query.getall("api_key", []) != [key]:
            return self._error(401, "Unauthorized API request.")
        if feed not in FEEDS:
            return self._error(404, f"Unknown IOC feed '{feed}'.")
        if self.dataset.generation != self._generation:
            self._forget_changed_feeds()
        try:
            query, offset, limit = self._parse(feed, request.query)
            items = self._select(query)
        except (_BadRequest, ValueError) as exc:
            return self._error(400, str(exc))
        if feed in faults.fail_always:
            self._count("fail_always")
            return self._error(503, "Service temporarily unavailable.")
        if self.options.latency:
            await asyncio.sleep(self.options.latency)
        start, faulty = offset, not faults.faulty_feeds or feed in faults.faulty_feeds
        if faulty:
            if faults.repeat_pages and offset:
                self._count("repeat_pages")
                start = 0
            if faults.slow_rate and self._rng.random() < faults.slow_rate:
                self._count("slow")
                await asyncio.sleep(faults.slow_seconds)
            kind = self._draw()
            if kind is not None:
                self._count(kind)
                body = self._page(query, items, offset, offset, limit)
                page = items[offset : offset + limit]
                return await self._misbehave(kind, request, body, page, offset, limit)
        served = len(items[start : start + limit])
        self.stats.rows_served += served
        body = self._page(query, items, offset, start, limit)
        if self._insert_budget and faulty and offset and served == limit:
            self._insert_at_head(query)  # before the next request: every later offset shifts
        return _json(200, body)

    def _parse(self, feed: str, query: Mapping[str, str]) -> tuple[_Query, int, int]:
        """Validate the parameters; return the query key, the offset and the applied limit."""
        params: dict[str, str] = {}
        for name, value in query.items():
            if name in params:
                raise _BadRequest(f"Parameter '{name}' was given more than once.")
            params[name] = value
        allowed = FEEDS[feed].restrictions
        unknown = sorted(set(params) - _COMMON - set(allowed))
        if unknown:
            raise _BadRequest(f"Unknown parameter(s) {', '.join(unknown)} for feed '{feed}'.")
        for name in ("after", "before"):
            if name in params and _instant(params[name]) is None:
                raise _BadRequest(
                    f"Invalid date format for '{name}': {params[name]!r}; "
                    "expected YYYY-MM-DDTHH:MM:SSZ, e.g. 2018-01-15T09:00:00Z."
                )
        limit = _integer(params, "limit", self.options.default_limit, 1)
        offset = _integer(params, "offset", 0, 0)
        scores = [_integer(params, n, DEFAULT_SCORE, 0, 100) for n in ("confidence", "severity")]
        flags = [_flag(params, n) for n in ("org_only", "user_only")]
        samples = tuple(sorted({s for s in params.get("sample", "").split(",") if s}))
        restrictions = tuple(sorted((k, v) for k, v in params.items() if k in allowed))
        if self.options.max_offset is not None and offset > self.options.max_offset:
            self._count("max_offset")
            raise _BadRequest(
                f"Invalid value for 'offset': {offset}; offsets above "
                f"{self.options.max_offset} are not supported. Narrow the time range "
                "with 'after' and 'before' instead."
            )
        if self.options.max_span is not None:
            self._check_span(params.get("after"), params.get("before"), self.options.max_span)
        query_key = (
            feed,
            params.get("after"),
            params.get("before"),
            *scores,
            params.get("ioc"),
            *flags,
            samples,
            restrictions,
        )
        return query_key, offset, min(limit, self.options.max_limit)

    def _check_span(self, after: str | None, before: str | None, most: timedelta) -> None:
        """Refuse a range longer than ``most`` (the dates are already valid)."""
        start, end = query_bounds(_instant(after), _instant(before), self.options.dataset.now)
        if end - start > most:
            self._count("max_span")
            raise _BadRequest(
                f"The requested time range is too long; from {start.strftime(API_FORMAT)} "
                f"to {end.strftime(API_FORMAT)} is {_duration(end - start)}, at most "
                f"{_duration(most)} is allowed. Split it into shorter ranges."
            )

    def _forget_changed_feeds(self) -> None:
        """Drop the cached selections and pages of every feed whose records changed."""
        # Read before the versions: a change made meanwhile is seen by the next request.
        self._generation = self.dataset.generation
        changed = set()
        for feed, seen in self._versions.items():
            version = self.dataset.version(feed)
            if version != seen:
                self._versions[feed] = version
                changed.add(feed)
        if changed:
            self._selections.drop(lambda query: query[0] in changed)
            self._pages.drop(lambda key: key[0][0] in changed)

    def _insert_at_head(self, query: _Query) -> None:
        """The insert fault: add records at the head of ``query`` for the next page."""
        count = min(self.options.faults.insert_while_paging, self._insert_budget)
        feed, after, before, confidence, severity, ioc, org, user, samples, restr = query
        added = self.dataset.insert_at_head(
            feed,
            count,
            after=_instant(after),
            before=_instant(before),
            after_inclusive=self.options.after_inclusive,
            before_inclusive=self.options.before_inclusive,
            confidence=confidence,
            severity=severity,
            ioc=ioc,
            org_only=org,
            user_only=user,
            sample=samples,
            restrictions=dict(restr),
        )
        self._insert_budget -= len(added)
        if added:
            self._count("insert")
            self.stats.rows_inserted += len(added)

    def _select(self, query: _Query) -> list[dict[str, Any]]:
        items = self._selections.get(query)
        if items is None:
            feed, after, before, confidence, severity, ioc, org, user, samples, restr = query
            records = self.dataset.select(
                feed,
                after=_instant(after),
                before=_instant(before),
                after_inclusive=self.options.after_inclusive,
                before_inclusive=self.options.before_inclusive,
                confidence=confidence,
                severity=severity,
                ioc=ioc,
                org_only=org,
                user_only=user,
                sample=samples,
                restrictions=dict(restr),
            )
            items = [r.item for r in records]
            self._selections.put(query, items)
        return items

    def _page(
        self, query: _Query, items: list[dict[str, Any]], index: int, start: int, limit: int
    ) -> bytes:
        """The page's envelope: ``data`` rendered once and cached, ``id`` fresh each time."""
        key = (query, index, start, limit)
        data = self._pages.get(key)
        if data is None:
            page = items[start : start + limit]
            data = dumps(
                {
                    "index": index,
                    "current_item_count": len(page),
                    "items_per_page": limit,
                    "items": page,
                }
            )
            self._pages.put(key, data)
        return b'{"api_version":2,"id":%d,"data":%b}' % (next(self._ids), data)

    def _draw(self) -> str | None:
        kinds = [(kind, rate) for kind, rate in self.options.faults.exclusive() if rate]
        draw = self._rng.random() if kinds else 1.0
        for kind, rate in kinds:
            if draw < rate:
                return kind
            draw -= rate
        return None

    async def _misbehave(
        self,
        kind: str,
        request: web.Request,
        body: bytes,
        page: list[dict[str, Any]],
        offset: int,
        limit: int,
    ) -> web.StreamResponse | None:
        if kind == "endless_body":
            return await self._endless(request, page, offset, limit)
        if kind == "trickle":
            return await self._trickle(request, body, len(page))
        if kind == "error":
            status = self._rng.choice((500, 502, 503))
            if status == 502:
                return web.Response(status=502, body=_HTML, content_type="text/html")
            return self._error(status, "Internal server error.")
        if kind == "html":
            return web.Response(status=200, body=_HTML, content_type="text/html")
        if kind == "missing_items":
            data = {"index": offset, "current_item_count": 0, "items_per_page": limit}
            return _json(200, orjson.dumps({"api_version": 2, "id": next(self._ids), "data": data}))
        transport = request.transport
        if kind == "drop" or transport is None:
            if transport is not None:
                transport.abort()
            return None
        if self._rng.random() < 0.5:
            # A complete HTTP response whose JSON just stops: only decoding notices.
            return _json(200, body[: len(body) // 2])
        # Promise the whole body, send half and hang up: the HTTP layer notices.
        response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        transport.close()
        return response

    async def _endless(
        self, request: web.Request, page: list[dict[str, Any]], offset: int, limit: int
    ) -> web.StreamResponse:
        """A 200 whose JSON never ends: the envelope's head, then the page's items forever."""
        head = b'{"api_version":2,"id":%d,"data":{"index":%d,"current_item_count":%d,' % (
            next(self._ids),
            offset,
            len(page),
        )
        head += b'"items_per_page":%d,"items":[' % limit
        # Items and commas, so the body stays a valid JSON prefix however much is read.
        unit = orjson.dumps(page)[1:-1] + b"," if page else b" "
        chunk = unit * max(1, _STREAM_CHUNK // len(unit))
        response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        response.enable_chunked_encoding()
        self.open_streams += 1
        try:
            await response.prepare(request)
            await response.write(head)
            while True:
                # write() waits while the client is not reading; sleep(0) lets the loop
                # serve others and notice a hang-up even when the client keeps up.
                await response.write(chunk)
                await asyncio.sleep(0)
        except ConnectionError:  # the client hung up: the only way this ends
            return response
        finally:
            self.open_streams -= 1

    async def _trickle(self, request: web.Request, body: bytes, rows: int) -> web.StreamResponse:
        """The valid page, Content-Length and all, at ``trickle_bytes_per_second``."""
        rate = self.options.faults.trickle_bytes_per_second
        step = max(1, math.ceil(rate / 20))  # about 20 writes a second
        response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        response.content_length = len(body)
        self.open_streams += 1
        try:
            await response.prepare(request)
            for at in range(0, len(body), step):
                if at:
                    await asyncio.sleep(step / rate)
                await response.write(body[at : at + step])
            await response.write_eof()
            self.stats.rows_served += rows
        except ConnectionError:  # the client gave up waiting
            pass
        finally:
            self.open_streams -= 1
        return response

    def _take_token(self) -> float:
        """0 if the token bucket lets a request pass now, else the seconds until it would."""
        rate = self.options.faults.rate_limit
        if rate is None:
            return 0.0
        now = time.monotonic()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    def _count(self, fault: str) -> None:
        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1

    def _error(
        self, status: int, message: str, headers: Mapping[str, str] = _NO_HEADERS
    ) -> web.Response:
        detail = {"code": status, "message": message, "help": "/doc/main/index.html"}
        error = {"message": message, "code": status, "errors": [detail]}
        body = orjson.dumps({"api_version": 2, "id": next(self._ids), "error": error})
        return _json(status, body, headers)


def _duration(span: timedelta) -> str:
    """``14d``, ``36h``, ``90m`` or ``61s``: the largest unit that divides ``span``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        step = timedelta(seconds=size)
        if span and not span % step:
            return f"{span // step}{unit}"
    return f"{span.total_seconds():g}s"


def _json(status: int, body: bytes, headers: Mapping[str, str] = _NO_HEADERS) -> web.Response:
    # Set verbatim: aiohttp's content_type= would write "application/json; charset=utf-8".
    return web.Response(status=status, body=body, headers={"Content-Type": JSON_TYPE, **headers})


def _instant(text: str | None) -> datetime | None:
    """The exact ``YYYY-MM-DDTHH:MM:SSZ`` form as an aware datetime; None if not that form."""
    if text is None or not _DATE.fullmatch(text):
        return None
    try:
        return datetime.strptime(text, API_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _integer(
    params: Mapping[str, str], name: str, default: int, low: int, high: int | None = None
) -> int:
    text = params.get(name)
    if text is None:
        return default
    value = int(text) if text.isascii() and text.isdigit() else low - 1
    if low <= value and (high is None or value <= high):
        return value
    bounds = f">= {low}" if high is None else f"{low}..{high}"
    raise _BadRequest(f"Invalid value for '{name}': {text!r}; expected an integer {bounds}.")


def _flag(params: Mapping[str, str], name: str) -> bool:
    text = params.get(name, "false")
    if text not in ("true", "false"):
        raise _BadRequest(f"Invalid value for '{name}': {text!r}; expected true or false.")
    return text == "true"


class Simulator:
    """The simulated API on ``host:port`` (port 0 picks a free one); an async context manager.

    Pass ``dataset`` to share its cache with the caller; its spec must equal
    ``options.dataset``.
    """

    def __init__(
        self,
        options: ServerOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dataset: Dataset | None = None,
    ) -> None:
        self.options = options or ServerOptions()
        if dataset is not None and dataset.spec != self.options.dataset:
            raise ValueError("dataset.spec differs from options.dataset")
        self.dataset = dataset or Dataset(self.options.dataset)
        self._service = _Service(self.options, self.dataset)
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``, while running."""
        if self._url is None:
            raise RuntimeError("the simulator is not running")
        return self._url

    @property
    def stats(self) -> SimStats:
        """The live counters, changed by the server's event loop."""
        return self._service.stats

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._service.stats = SimStats()

    @property
    def open_streams(self) -> int:
        """Endless or trickling bodies still being sent (0 once their clients hung up)."""
        return self._service.open_streams

    def add_records(
        self, feed: str, span: date | tuple[datetime, datetime], count: int
    ) -> list[dict[str, Any]]:
        """Late records: :meth:`~harvester.sim.data.Dataset.add_records`, served at once."""
        return self.dataset.add_records(feed, span, count)

    async def start(self) -> None:
        """Bind and start listening."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        # A short grace on shutdown: a slow page must not hold up a test's teardown.
        runner = web.AppRunner(self._service.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class SimulatorThread:
    """A :class:`Simulator` on its own thread and event loop, for sync code and fixtures."""

    def __init__(
        self,
        options: ServerOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dataset: Dataset | None = None,
    ) -> None:
        self._sim = Simulator(options, host=host, port=port, dataset=dataset)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL while running."""
        return self._sim.url

    @property
    def options(self) -> ServerOptions:
        """The options the server runs with."""
        return self._sim.options

    @property
    def dataset(self) -> Dataset:
        """The dataset served (thread-safe, shared with the server)."""
        return self._sim.dataset

    @property
    def stats(self) -> SimStats:
        """A snapshot of the counters, taken on the server's loop."""
        return self._on_loop(lambda: copy.deepcopy(self._sim.stats))

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._on_loop(self._sim.reset_stats)

    @property
    def open_streams(self) -> int:
        """Endless or trickling bodies still being sent, read on the server's loop."""
        return self._on_loop(lambda: self._sim.open_streams)

    def add_records(
        self, feed: str, span: date | tuple[datetime, datetime], count: int
    ) -> list[dict[str, Any]]:
        """Late records: :meth:`~harvester.sim.data.Dataset.add_records`, served at once.

        Thread-safe; the server drops its cached pages of ``feed`` before its next answer.
        """
        return self._sim.add_records(feed, span, count)

    def start(self) -> None:
        """Start the thread; return once the server listens, or raise why it could not."""
        if self._thread is not None:
            raise RuntimeError("the simulator thread is already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="threatgrid-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self.stop()

    def stop(self) -> None:
        """Stop the server, close its loop and join the thread; idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended on its own
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # re-raised by start() or stop() on the caller's thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        await self._sim.start()
        try:
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await self._sim.stop()

    def _on_loop(self, call: Callable[[], _V]) -> _V:
        loop = self._loop
        if loop is None:
            return call()

        async def run() -> _V:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=30)


def serve(
    options: ServerOptions | None = None, *, host: str = "127.0.0.1", port: int = 8080
) -> None:
    """Serve until SIGINT or SIGTERM (for ``harvester simulate``)."""
    asyncio.run(_serve(options or ServerOptions(), host, port))


async def _serve(options: ServerOptions, host: str, port: int) -> None:
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Simulator(options, host=host, port=port) as sim:
            structlog.get_logger().info("simulator listening", url=sim.url, feeds=list(FEEDS))
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
