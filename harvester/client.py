"""The Threat Grid API client: one page per call, auth, error envelope, retries.

:class:`ApiClient` owns the aiohttp session, the cap on requests in flight and the
shared :class:`~harvester.ratelimit.AdaptiveRateLimiter`. :meth:`ApiClient.fetch_page`
returns a validated :class:`Page` or raises from :mod:`harvester.errors`; aiohttp's
own exceptions never escape. Messages name the feed URL without its query string, so
the key cannot leak even with ``--auth query``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import aiohttp
import orjson
import pyarrow as pa

from harvester import bigpage
from harvester.config import API_KEY_ENV
from harvester.counters import Counters
from harvester.errors import (
    ApiError,
    AuthError,
    BadResponse,
    ConnectionFailed,
    PageTooLarge,
    RateLimited,
    ReadTimeout,
    RequestRejected,
    ServerError,
)
from harvester.ratelimit import AdaptiveRateLimiter
from harvester.retry import RetryPolicy, Sleep, call_with_retry
from harvester.schemas import FEEDS
from harvester.secret import Secret, guard_loggers, redact

guard_loggers()

FEED_PATH = "/api/v2/iocs/feeds/{feed}"
USER_AGENT = "threatgrid-harvester/0.1"


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of a feed, as the server described it.

    A small page holds its ``items``. A big one (see :mod:`harvester.bigpage`) holds its
    rows already converted (``rows``, the first item alone as row 0) and only the items
    paging needs: the first, every 50th and the last (``kept``), and their ``total``.
    """

    index: int
    items_per_page: int
    items: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    """The body's size in bytes."""
    rows: pa.Table | None = None
    kept: tuple[dict[str, Any], ...] = ()
    total: int = 0
    skip: int = 0
    """Leading items not handed on (the one pages overlap by)."""

    @property
    def count(self) -> int:
        """Items on the page (less the ones skipped)."""
        return (len(self.items) if self.rows is None else self.total) - self.skip

    @property
    def first(self) -> dict[str, Any] | None:
        """The page's first item as sent (the newest), or None when it is empty."""
        if self.rows is None:
            return self.items[0] if self.items else None
        return self.kept[0] if self.kept else None

    @property
    def last(self) -> dict[str, Any] | None:
        """The page's last item (the oldest), or None when it is empty."""
        if self.rows is None:
            return self.items[-1] if self.items else None
        return self.kept[-1] if self.kept else None

    def fingerprint(self) -> int:
        """A cheap identity of the page's content: its size, every 50th and its last item."""
        sample = self.items[:: bigpage.SAMPLE] if self.rows is None else list(self.kept[:-1])
        return hash((self.count + self.skip, _dumps(sample), _dumps(self.last)))

    def without_first(self) -> Page:
        """The page less its first item (the one the page before ended with)."""
        if self.rows is None:
            return replace(self, items=self.items[1:])
        return replace(self, skip=self.skip + 1)

    def handed_items(self) -> list[dict[str, Any]]:
        """The items to convert (small pages; big ones are converted already)."""
        return self.items[self.skip :] if self.skip else self.items

    def handed_rows(self) -> pa.Table | None:
        """A big page's rows to keep (None for a small page)."""
        if self.rows is None:
            return None
        return self.rows.slice(self.skip) if self.skip else self.rows


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # a lone surrogate, or an integer past 64 bits: still a fingerprint
        return repr(value).encode("utf-8", "backslashreplace")


class ApiClient:
    """Fetches pages of IOC feeds politely and maps every failure to our errors."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Secret,
        auth: str,
        concurrency: int,
        limiter: AdaptiveRateLimiter,
        policy: RetryPolicy,
        request_timeout: float,
        max_page_bytes: int,
        counters: dict[str, Counters] | None = None,
        sleep: Sleep = asyncio.sleep,
        connector: aiohttp.BaseConnector | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._auth = auth
        self._in_flight = asyncio.Semaphore(concurrency)
        self.limiter = limiter
        self.policy = policy
        self._request_timeout = request_timeout
        self._max_page_bytes = max_page_bytes
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._sleep = sleep
        self._connector = connector
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self.counters: dict[str, Counters] = {} if counters is None else counters

    async def __aenter__(self) -> ApiClient:
        connector = self._connector or aiohttp.TCPConnector(limit=self._concurrency)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._auth == "header":
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=self._timeout, raise_for_status=False
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, feed: str) -> str:
        """The feed's URL, without a query string (safe to log)."""
        return self.base_url + FEED_PATH.format(feed=feed)

    def stats(self, feed: str) -> Counters:
        """The counters of ``feed`` (created on first use)."""
        return self.counters.setdefault(feed, Counters())

    async def fetch_page(
        self, feed: str, params: Mapping[str, str], *, policy: RetryPolicy | None = None
    ) -> Page:
        """Fetch one page with retries; return it validated or raise an ApiError."""
        stats = self.stats(feed)

        def on_retry(error: BaseException, attempt: int, delay: float) -> None:
            stats.retries += 1

        return await call_with_retry(
            lambda: self._get_once(feed, params),
            policy or self.policy,
            sleep=self._sleep,
            on_retry=on_retry,
        )

    async def _get_once(self, feed: str, params: Mapping[str, str]) -> Page:
        assert self._session is not None, "use ApiClient inside 'async with'"
        query = dict(params)
        if self._auth == "query":
            query["api_key"] = self._key.reveal()
        url = self.url(feed)
        stats = self.stats(feed)
        # In-flight slot first, then the pace: a request admitted by the limiter is sent
        # at once, instead of queueing at the semaphore while the rate it was paced at
        # is already known to be too high.
        async with self._in_flight, self.limiter:
            stats.requests += 1
            answered = False  # did the response begin? Then the API is reachable.
            try:
                async with self._session.get(url, params=query) as response:
                    answered = True
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    content_type = response.headers.get("Content-Type", "")
                    body = await self._read_capped(response, url)
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                if answered:
                    raise ReadTimeout(
                        f"GET {url}: the server answered {status} but the body did not arrive "
                        f"within --request-timeout {self._request_timeout:g}s"
                    ) from exc
                raise ConnectionFailed(
                    f"GET {url}: no response within --request-timeout {self._request_timeout:g}s"
                ) from exc
            except aiohttp.ClientPayloadError as exc:
                raise BadResponse(f"GET {url}: body cut short ({redact(str(exc))})") from exc
            except aiohttp.ClientError as exc:
                detail = redact(str(exc)) or type(exc).__name__
                error = BadResponse if answered else ConnectionFailed
                raise error(f"GET {url} failed: {detail}") from exc
        stats.bytes += len(body)
        if status == 429:
            wait = _retry_after(retry_after)
            self.limiter.on_throttled(wait)
            stats.throttled += 1
            raise RateLimited(f"GET {url}: 429 Too Many Requests", retry_after=wait)
        self.limiter.on_success()
        if status != 200:
            raise _status_error(url, status, body)
        if len(body) > bigpage.THRESHOLD:
            # Decoded a slice at a time, off the event loop: a big page is seconds of work.
            return await asyncio.to_thread(_parse_big_page, url, body, content_type, feed)
        return _parse_page(url, body, content_type)

    async def _read_capped(self, response: aiohttp.ClientResponse, url: str) -> bytes | bytearray:
        """The body, but never more than ``--max-page-bytes`` of it (an endless one stops).

        A big body is copied chunk by chunk into one buffer and returned as it is: reading
        it whole (aiohttp's ``read()`` joins a list of chunks) briefly holds it twice, and
        that second copy, freed in a heap the decoding threads do not reuse, was most of
        a big page's peak memory.
        """
        cap = self._max_page_bytes
        length = response.content_length
        if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # Content-Length counts the encoded bytes; aiohttp hands over the decoded
            # body, which is longer: read it as of unknown length, the cap on what we hold.
            length = None
        if length is not None and length > cap:
            raise PageTooLarge(
                f"GET {url}: the body is larger than --max-page-bytes ({cap:,} bytes)"
            )
        if length is not None and length <= bigpage.THRESHOLD:
            return await response.read()
        buffer = bytearray(length or 0)
        filled = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            end = filled + len(chunk)
            if end > cap:
                raise PageTooLarge(
                    f"GET {url}: the body is larger than --max-page-bytes ({cap:,} bytes)"
                )
            buffer[filled:end] = chunk  # within a known length: no reallocation
            filled = end
        if length is not None and filled != length:
            raise BadResponse(f"GET {url}: body cut short ({filled:,} of {length:,} bytes)")
        return buffer


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: rare for APIs; backoff covers it


def _server_message(body: bytes | bytearray) -> str:
    try:
        error = orjson.loads(body)["error"]
        return redact(str(error.get("message") or error))
    except Exception:
        return redact(body[:200].decode("utf-8", "replace")).strip() or "(empty body)"


def _status_error(url: str, status: int, body: bytes | bytearray) -> ApiError:
    message = _server_message(body)
    if status in (401, 403):
        return AuthError(
            f"the API refused the key ({status}: {message}); set {API_KEY_ENV} to a valid "
            "Threat Grid API key",
            status=status,
        )
    if status == 408 or status >= 500:
        return ServerError(f"GET {url}: {status} from server: {message}", status=status)
    return RequestRejected(
        f"GET {url}: the API rejected the request ({status}): {message}", status=status
    )


def _loads(body: bytes | bytearray) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the standard library reads any JSON.
        return json.loads(body)


def _parse_big_page(url: str, body: bytes | bytearray, content_type: str, feed: str) -> Page:
    try:
        index, per_page, rows, kept, total = bigpage.decode(body, FEEDS[feed])
    except bigpage.Refused:
        return _parse_page(url, body, content_type)  # an odd body: decoded whole
    except BadResponse as exc:
        raise BadResponse(f"GET {url}: {exc}") from exc
    return Page(
        index=index,
        items_per_page=per_page,
        size=len(body),
        rows=rows,
        kept=tuple(kept),
        total=total,
    )


def _parse_page(url: str, body: bytes | bytearray, content_type: str) -> Page:
    try:
        document = _loads(body)
    except ValueError as exc:
        kind = content_type.split(";")[0] or "no content type"
        raise BadResponse(
            f"GET {url}: expected a JSON body, got {len(body)} bytes of {kind} "
            "(truncated or not JSON)"
        ) from exc
    data = document.get("data") if isinstance(document, dict) else None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(items, list):
        raise BadResponse(f"GET {url}: expected an envelope with data.items, got something else")
    index = data.get("index", 0)
    per_page = data.get("items_per_page")
    if type(index) is not int or type(per_page) is not int or per_page < 1:
        raise BadResponse(f"GET {url}: envelope lacks integer data.index/data.items_per_page")
    return Page(index=index, items_per_page=per_page, items=items, size=len(body))
