"""Paging one query, against a fake page source (no HTTP: pure logic)."""

import asyncio
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.client import Page
from harvester.errors import PageTooLarge, PagingError, Shifted
from harvester.paging import page_through


def source(total: int, clamp: int, *, sizes: Callable[[int], int] | None = None):
    """A page source over items 0..total-1 that clamps limit like a real server."""
    calls: list[int] = []

    async def fetch(offset: int, limit: int) -> Page:
        calls.append(offset)
        await asyncio.sleep(0)
        size = min(limit, sizes(len(calls)) if sizes else clamp)
        items = [{"n": i} for i in range(offset, min(offset + size, total))]
        return Page(index=offset, items_per_page=size, items=items)

    return fetch, calls


def collect(fetch, *, limit: int, prefetch: int, covered=None) -> list[int]:
    seen: list[int] = []

    async def on_page(page: Page) -> None:
        seen.extend(item["n"] for item in page.items)

    asyncio.run(
        page_through(fetch, limit=limit, prefetch=prefetch, on_page=on_page, covered=covered)
    )
    return seen


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(0, 400),
    clamp=st.integers(1, 60),
    limit=st.integers(1, 100),
    prefetch=st.integers(1, 6),
)
def test_every_item_once_in_order(total: int, clamp: int, limit: int, prefetch: int) -> None:
    """Whatever the clamp, limit and prefetch depth, each item arrives once, in order."""
    fetch, _ = source(total, clamp)
    assert collect(fetch, limit=limit, prefetch=prefetch) == list(range(total))


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(0, 400),
    clamp=st.integers(1, 60),
    prefetch=st.integers(1, 6),
    shares=st.lists(st.one_of(st.none(), st.floats(1e-9, 1.0)), min_size=1, max_size=8),
)
def test_any_coverage_estimate_only_changes_speed(
    total: int, clamp: int, prefetch: int, shares: list[float | None]
) -> None:
    """However wrong the covered-share estimate, each item still arrives once, in order."""
    fetch, _ = source(total, clamp)
    answers = itertools.cycle(shares)
    covered = lambda page: next(answers)  # noqa: E731
    assert collect(fetch, limit=100, prefetch=prefetch, covered=covered) == list(range(total))


def test_density_estimate_stops_fetching_past_the_end() -> None:
    """Told how much of the range each page covered, paging asks for no page past the end."""
    total, size = 95, 10
    fetch, calls = source(total, size)
    # Items are spread evenly over the range: after n items, n/total of it is covered.
    covered = lambda page: (page.items[-1]["n"] + 1) / total  # noqa: E731
    assert collect(fetch, limit=size, prefetch=4, covered=covered) == list(range(total))
    # pages overlap by one item: offsets 0, 9, 18 ... 90, the last one short
    assert sorted(calls) == list(range(0, 91, 9))
    blind, blind_calls = source(total, size)
    assert collect(blind, limit=size, prefetch=4) == list(range(total))
    assert len(blind_calls) > len(calls)  # without the estimate it fetches ahead past the end


def test_clamped_limit_does_not_stop_early() -> None:
    """A server that applies 10 when asked for 1000 is paged to the end, not stopped."""
    fetch, calls = source(95, 10)
    assert collect(fetch, limit=1000, prefetch=1) == list(range(95))
    assert calls == list(range(0, 91, 9))


def test_exact_multiple_ends_on_the_overlap_page() -> None:
    """When the total is a multiple of the page size, the last page holds the overlap only."""
    fetch, calls = source(30, 10)
    assert collect(fetch, limit=10, prefetch=1) == list(range(30))
    assert calls == [0, 9, 18, 27]


def test_a_record_added_at_the_head_while_paging_is_caught() -> None:
    """A record inserted at the head shifts every offset: Shifted, never a duplicate."""
    items = [{"n": i} for i in range(50)]

    async def fetch(offset: int, limit: int) -> Page:
        if offset:  # after the first page, a new record arrives at the head
            items.insert(0, {"n": -1}) if items[0]["n"] != -1 else None
        page = items[offset : offset + limit]
        return Page(index=offset, items_per_page=limit, items=page)

    with pytest.raises(Shifted):
        collect(fetch, limit=10, prefetch=1)


def test_pages_of_one_item_need_no_overlap() -> None:
    """A server that applies a limit of one still pages every item once."""
    fetch, calls = source(5, 1)
    assert collect(fetch, limit=10, prefetch=2) == list(range(5))
    assert sorted(set(calls)) == list(range(6))


def test_a_page_too_big_is_asked_for_again_with_half_the_limit() -> None:
    """PageTooLarge halves the limit until a page fits; nothing is lost or repeated."""
    limits: list[int] = []

    async def fetch(offset: int, limit: int) -> Page:
        limits.append(limit)
        if limit > 12:
            raise PageTooLarge("body over the cap")
        items = [{"n": i} for i in range(offset, min(offset + limit, 40))]
        return Page(index=offset, items_per_page=limit, items=items)

    assert collect(fetch, limit=100, prefetch=2) == list(range(40))
    assert limits[:4] == [100, 50, 25, 12]


def test_a_single_item_too_big_for_the_cap_fails_naming_the_flag() -> None:
    """Even a page of one item over the cap: a PagingError that names --max-page-bytes."""

    async def fetch(offset: int, limit: int) -> Page:
        raise PageTooLarge("body over the cap")

    with pytest.raises(PagingError, match="--max-page-bytes"):
        collect(fetch, limit=8, prefetch=1)


@given(st.lists(st.integers(3, 12), min_size=1, max_size=30), st.integers(1, 5))
@settings(max_examples=80, deadline=None)
def test_page_size_changing_midway_loses_nothing(sizes: list[int], prefetch: int) -> None:
    """If the server changes its page size between pages, paging restarts correctly."""
    fetch, _ = source(200, 0, sizes=lambda n: sizes[(n - 1) % len(sizes)])
    assert collect(fetch, limit=50, prefetch=prefetch) == list(range(200))


def test_repeated_page_fails_instead_of_looping() -> None:
    """A server that ignores offset (same items, right index) is caught, not looped on."""

    async def fetch(offset: int, limit: int) -> Page:
        return Page(index=offset, items_per_page=10, items=[{"n": i} for i in range(10)])

    with pytest.raises(PagingError, match="same page at offsets 0 and 9"):
        collect(fetch, limit=10, prefetch=3)


def test_wrong_index_fails() -> None:
    """A page whose index is not the offset asked for is an error."""

    async def fetch(offset: int, limit: int) -> Page:
        return Page(index=0, items_per_page=10, items=[{"n": offset + i} for i in range(10)])

    with pytest.raises(PagingError, match="asked for offset 9"):
        collect(fetch, limit=10, prefetch=2)


def test_failure_cancels_pages_in_flight() -> None:
    """An error on one page leaves no fetch task running behind it."""
    started: list[int] = []
    finished: list[int] = []

    async def fetch(offset: int, limit: int) -> Page:
        started.append(offset)
        if offset == 18:
            raise RuntimeError("boom")
        await asyncio.sleep(0.05)
        finished.append(offset)
        return Page(index=offset, items_per_page=10, items=[{"n": offset + i} for i in range(10)])

    with pytest.raises(RuntimeError):
        collect(fetch, limit=10, prefetch=4)
    assert set(finished) < set(started)


def test_covered_share_reads_newest_first_pages_only() -> None:
    """The share covered is read from the oldest stamp of a newest-first page, else None."""
    from datetime import UTC, datetime

    from harvester.orchestrator import covered_share
    from harvester.spans import Span

    start = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    span = Span(feed="ips", start=start, end=start + 86_400)

    def page(*stamps: object) -> Page:
        return Page(index=0, items_per_page=10, items=[{"timestamp": s} for s in stamps])

    assert covered_share(page("2024-01-01T23:00:00Z", "2024-01-01T18:00:00Z"), span) == 0.25
    assert covered_share(page("2024-01-01T18:00:00Z", "2024-01-01T23:00:00Z"), span) is None
    assert covered_share(page("2024-01-01T23:00:00Z", "2023-12-31T23:59:59Z"), span) is None
    assert covered_share(page("2024-01-01T23:00:00Z", None), span) is None
    assert covered_share(page("2024-01-01T23:00:00.5Z"), span) is None
    assert covered_share(page("2024-01-01T00:00+01Z"), span) is None  # the shape, an offset
    assert covered_share(Page(index=0, items_per_page=10, items=[]), span) is None
