"""Limit/offset paging of one query, with pages fetched ahead and checked for shifts.

The server may apply a smaller limit than we ask for; ``items_per_page`` says what it
applied. So the offset advances by what came back, and paging stops only on a page
shorter than ``items_per_page`` -- never on "fewer than I asked for", which silently
loses data when the server clamps.

**Pages overlap by one item.** Items come newest first, so a record added at the head
while we page shifts every later offset by one: the next page would repeat an item (a
duplicate) or, after a deletion, skip one (a loss). Each page after the first therefore
starts one item early, at the previous page's last item, and that item must come back
unchanged; if it does not, the data moved under us and :class:`~harvester.errors.Shifted`
is raised, so the caller starts the query again. The overlapping item is not handed on
twice.

Once the first page has told us the page size, up to ``prefetch`` later pages are
requested at once and handed on strictly in offset order. If the server changes its
page size mid-way, the pipeline restarts from the last verified offset. A page that
repeats an earlier one, or whose ``index`` is not the offset asked for, raises
:class:`~harvester.errors.PagingError` instead of looping. A page too big for
``--max-page-bytes`` is asked for again with half the limit.

When the caller can tell how much of the query's time range the pages so far have
covered, the depth ahead is cut to the pages the density so far predicts; the estimate
only ever limits speculation.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from harvester.client import Page
from harvester.errors import PageTooLarge, PagingError, Shifted

FetchPage = Callable[[int, int], Awaitable[Page]]
OnPage = Callable[[Page], Awaitable[None]]
Covered = Callable[[Page], float | None]

#: Pages fetched ahead cover the predicted remainder with this much to spare, in pages.
SPARE = 0.5


@dataclass(kw_only=True)
class PagingResult:
    """What paging one query did."""

    pages: int = 0
    items: int = 0
    limit: int = 0
    """The limit asked for at the end (halved when pages were too big)."""


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
    pages up to and including ``page`` have covered, or None if it cannot tell. Pages
    handed to ``on_page`` never repeat the overlapping item.
    """
    result = PagingResult(limit=limit)
    seen: dict[int, int] = {}
    share: float | None = None
    last: dict[str, Any] | None = None  # the last item handed on: the next page starts with it

    def depth(size: int) -> int:
        # Fetch ahead only as deep as the query has proved to be.
        wanted = min(prefetch, result.pages)
        if share:
            left = result.items * (1 - share) / share
            wanted = min(wanted, math.ceil(round(left / max(size - 1, 1) + SPARE, 6)))
        return max(1, wanted)

    async def get(offset: int) -> Page:
        while True:
            try:
                return await fetch(offset, result.limit)
            except PageTooLarge as exc:
                if result.limit <= 1:
                    raise PagingError(
                        f"even a page of one item is larger than --max-page-bytes "
                        f"({exc}); raise --max-page-bytes"
                    ) from exc
                result.limit = max(1, result.limit // 2)

    async def accept(page: Page, offset: int, *, overlap: bool) -> None:
        nonlocal share, last
        if page.index != offset:
            raise PagingError(
                f"asked for offset {offset}, the server answered index {page.index}; "
                "it does not page as documented"
            )
        if page.count > page.items_per_page:
            raise PagingError(
                f"page at offset {offset} holds {page.count} items, more than its "
                f"items_per_page {page.items_per_page}"
            )
        if page.count:
            fingerprint = page.fingerprint()
            if fingerprint in seen:
                raise PagingError(
                    f"the server returned the same page at offsets {seen[fingerprint]} and "
                    f"{offset}; stopping instead of looping"
                )
            seen[fingerprint] = offset
        handed = page
        if overlap:
            if not page.count or page.first != last:
                raise Shifted(
                    f"the item at offset {offset} is not the one the page before ended "
                    "with: records were added or removed while paging"
                )
            handed = page.without_first()
        if page.count:
            last = page.last
        if handed.count:
            result.pages += 1
            result.items += handed.count
            share = covered(handed) if covered else None
            await on_page(handed)

    first = await get(0)
    await accept(first, 0, overlap=False)
    size = first.items_per_page
    offset = first.count  # the first offset not yet handed on
    if first.count < size:
        return result

    while True:
        # With pages of one item there is nothing to overlap.
        back = 1 if size > 1 else 0
        stride = size - back
        pending: deque[tuple[int, asyncio.Task[Page]]] = deque()
        cursor = offset - back
        try:
            while True:
                while len(pending) < depth(size):
                    pending.append((cursor, asyncio.ensure_future(get(cursor))))
                    cursor += stride
                at, task = pending.popleft()
                page = await task
                await accept(page, at, overlap=bool(back))
                offset = at + page.count
                if page.items_per_page != size:
                    size = page.items_per_page  # offsets ahead were computed with the old size
                    if page.count < size:
                        return result
                    break
                if page.count < size:
                    return result
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
