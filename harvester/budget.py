"""A budget of page bytes in flight: what bounds memory whatever the page size.

A page costs memory from the moment it is requested until its rows are in the spool:
its body, then its decoded items (about two and a half times the body), then its Arrow
rows. Pages fetched ahead wait their turn decoded, so ``concurrency x prefetch`` pages
of the largest size the API gives could otherwise sit in memory at once.

Before each request, :meth:`PageBudget.reserve` books an estimate of the body (the
largest body this feed has sent so far, or a small guess at first) and waits while the
pages in flight would exceed the budget; the booking is corrected to the real size once
the body arrived, and given back when the page object is gone (converted, or dropped
with a cancelled request). One request always goes, so a single page larger than the
budget still gets through: ``--max-page-bytes`` is what caps a single page.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

FIRST_GUESS = 1024 * 1024
"""Bytes booked for a feed's first page, before its size is known."""


@dataclass(kw_only=True)
class _Booking:
    size: int
    released: bool = False


@dataclass(kw_only=True)
class PageBudget:
    """Bytes of pages in flight, at most ``limit`` (one page may go over alone)."""

    limit: int
    used: int = 0
    largest: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def estimate(self, feed: str) -> int:
        """What a page of ``feed`` is likely to weigh."""
        return self.largest.get(feed, FIRST_GUESS)

    async def reserve(self, feed: str) -> _Booking:
        """Book a page of ``feed``; wait while the budget is spent (unless nothing is out)."""
        size = self.estimate(feed)
        while self.used and self.used + size > self.limit:
            self._changed.clear()
            await self._changed.wait()
        self.used += size
        return _Booking(size=size)

    def settle(self, feed: str, booking: _Booking, body: int) -> None:
        """The body arrived: book its real size, and remember the feed's largest."""
        self.largest[feed] = max(self.largest.get(feed, 0), body)
        if not booking.released:
            self.used += body - booking.size
            booking.size = body

    def release(self, booking: _Booking) -> None:
        """Give a booking back (idempotent)."""
        if not booking.released:
            booking.released = True
            self.used -= booking.size
            self._changed.set()

    def hold_until_gone(self, page: object, booking: _Booking) -> None:
        """Release ``booking`` when ``page`` is garbage: converted, or never used."""
        loop = asyncio.get_running_loop()

        def free() -> None:
            try:
                loop.call_soon_threadsafe(self.release, booking)
            except RuntimeError:  # the loop is closed: nothing waits any more
                booking.released = True

        weakref.finalize(page, free)
