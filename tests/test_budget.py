"""The page budget: pages in flight stay under it, one always goes, bookings come back."""

from __future__ import annotations

import asyncio
import gc

from harvester.budget import FIRST_GUESS, PageBudget


class Page:
    """Something a booking can outlive."""


def test_pages_wait_while_the_budget_is_spent_and_one_always_goes() -> None:
    """Bookings past the limit wait until one is released; a single big page still goes."""

    async def main() -> list[str]:
        budget = PageBudget(limit=3 * FIRST_GUESS)
        events: list[str] = []
        held = [await budget.reserve("ips") for _ in range(3)]
        waiting = asyncio.create_task(budget.reserve("ips"))
        await asyncio.sleep(0.01)
        events.append(f"waiting={not waiting.done()}")
        budget.release(held[0])
        booking = await asyncio.wait_for(waiting, 1)
        events.append(f"used={budget.used // FIRST_GUESS}")
        for b in [*held[1:], booking]:
            budget.release(b)
        budget.settle("ips", await budget.reserve("ips"), 10 * FIRST_GUESS)  # one huge page
        events.append(f"alone={budget.used // FIRST_GUESS}")
        return events

    assert asyncio.run(main()) == ["waiting=True", "used=3", "alone=10"]


def test_a_booking_comes_back_when_its_page_is_gone() -> None:
    """hold_until_gone releases the booking once nothing refers to the page."""

    async def main() -> int:
        budget = PageBudget(limit=10 * FIRST_GUESS)
        page = Page()
        booking = await budget.reserve("urls")
        budget.settle("urls", booking, 2 * FIRST_GUESS)
        budget.hold_until_gone(page, booking)
        assert budget.used == 2 * FIRST_GUESS
        del page
        gc.collect()
        await asyncio.sleep(0)  # the release is scheduled on the loop
        return budget.used

    assert asyncio.run(main()) == 0
