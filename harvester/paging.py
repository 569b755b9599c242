"""Limit/offset paging inside one window, with pages fetched ahead.

The server may apply a smaller limit than we ask for; ``items_per_page`` says what it
applied. So the offset advances by what came back, and paging stops only on an empty
page or one shorter than ``items_per_page`` -- never on "fewer than I asked for",
which silently loses data when the server clamps.

Once the first page has told us the page size, up to ``prefetch`` later pages are
requested at once (offsets ``o``, ``o + size``, ...) and handed on strictly in offset
order. If the server changes its page size mid-way, the pipeline restarts from the
last verified offset. A page that repeats an earlier one, or one whose ``index`` is not
the offset asked for, fails the window with :class:`PagingError` instead of looping.

The API gives no total. When the caller can tell how much of the query's time range
the pages so far have covered (items come newest first), the depth ahead is cut to the
pages the density so far predicts, so a window does not end with ``prefetch - 1``
requests for pages past its end. The estimate only ever limits speculation: paging
still ends only on a short or empty page, and at least one page is always in flight.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from harvester.client import Page
from harvester.errors import PagingError

FetchPage = Callable[[int, int], Awaitable[Page]]
OnPage = Callable[[Page], Awaitable[None]]
Covered = Callable[[Page], float | None]

#: Pages fetched ahead cover the predicted remainder with this much to spare, in pages.
SPARE = 0.5


@dataclass(kw_only=True)
class PagingResult:
    """What paging one window did."""

    pages: int = 0
    items: int = 0


async def page_through(
    fetch: FetchPage,
    *,
    limit: int,
    prefetch: int,
    on_page: OnPage,
    covered: Covered | None = None,
) -> PagingResult:
    """Fetch every page of one query, calling ``on_page`` for each in offset order.

    ``covered(page)``, if given, says what fraction (0..1] of the query's range the
    pages up to and including ``page`` have covered, or None if it cannot tell.
    """
    result = PagingResult()
    seen: dict[int, int] = {}
    share: float | None = None

    def depth(size: int) -> int:
        # Fetch ahead only as deep as the window has proved to be: a window of a few
        # pages should not pay for requests past its end.
        wanted = min(prefetch, result.pages)
        if share:
            left = result.items * (1 - share) / share
            wanted = min(wanted, math.ceil(round(left / size + SPARE, 6)))  # no float fuzz
        return max(1, wanted)

    async def accept(page: Page, offset: int) -> None:
        nonlocal share
        if page.index != offset:
            raise PagingError(
                f"asked for offset {offset}, the server answered index {page.index}; "
                "it does not page as documented"
            )
        if len(page.items) > page.items_per_page:
            raise PagingError(
                f"page at offset {offset} holds {len(page.items)} items, more than its "
                f"items_per_page {page.items_per_page}"
            )
        if page.items:
            fingerprint = _fingerprint(page.items)
            if fingerprint in seen:
                raise PagingError(
                    f"the server returned the same page at offsets {seen[fingerprint]} and "
                    f"{offset}; stopping instead of looping"
                )
            seen[fingerprint] = offset
            result.pages += 1
            result.items += len(page.items)
            share = covered(page) if covered else None
            await on_page(page)

    first = await fetch(0, limit)
    await accept(first, 0)
    size = first.items_per_page
    offset = len(first.items)
    if len(first.items) < size:
        return result

    while True:
        pending: deque[tuple[int, asyncio.Task[Page]]] = deque()
        cursor = offset
        try:
            while True:
                while len(pending) < depth(size):
                    pending.append((cursor, asyncio.ensure_future(fetch(cursor, limit))))
                    cursor += size
                at, task = pending.popleft()
                page = await task
                await accept(page, at)
                offset = at + len(page.items)
                if page.items_per_page != size:
                    size = page.items_per_page  # offsets ahead were computed with the old size
                    if len(page.items) < size:
                        return result
                    break
                if len(page.items) < size:
                    return result
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)


def _fingerprint(items: list[dict[str, Any]]) -> int:
    """A cheap identity of a page's content: its length and every 50th item.

    A server that ignores ``offset`` repeats pages exactly, which this catches; two
    honest pages agree on all of it only if they hold the same records in the same
    places, which real feeds do not.
    """
    return hash((len(items), orjson.dumps(items[::50]), orjson.dumps(items[-1])))
