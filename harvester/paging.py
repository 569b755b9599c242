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
from dataclasses import dataclass, replace
from typing import Any

import orjson

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
        items = page.items
        if overlap:
            if not items or items[0] != last:
                raise Shifted(
                    f"the item at offset {offset} is not the one the page before ended "
                    "with: records were added or removed while paging"
                )
            items = items[1:]
        if page.items:
            last = page.items[-1]
        if items:
            result.pages += 1
            result.items += len(items)
            handed = replace(page, items=items)
            share = covered(handed) if covered else None
            await on_page(handed)

    first = await get(0)
    await accept(first, 0, overlap=False)
    size = first.items_per_page
    offset = len(first.items)  # the first offset not yet handed on
    if len(first.items) < size:
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
    return hash((len(items), _dumps(items[::50]), _dumps(items[-1])))


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # a lone surrogate, or an integer past 64 bits: still a fingerprint
        return repr(value).encode("utf-8", "backslashreplace")
