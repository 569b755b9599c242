"""Planning and span carving: pure functions, checked against what they promise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.intervals import Spans
from harvester.spans import DAY, SPAN_PAGES, Span, SpanQueue, carve, span_length, too_dense

STEPS = st.sampled_from([900, 3600, 6 * 3600, DAY, 7 * DAY])
BASE = 19_723 * DAY  # 2024-01-01


@settings(max_examples=300, deadline=None)
@given(
    step=STEPS,
    windows=st.lists(st.integers(0, 400), min_size=1, max_size=60),
    length=st.one_of(st.none(), st.integers(1, 400 * DAY)),
    limit_windows=st.integers(1, 400),
)
def test_carving_takes_whole_windows_oldest_first_within_the_limit(
    step: int, windows: list[int], length: int | None, limit_windows: int
) -> None:
    """Each span is whole, consecutive todo windows from the oldest, never over the limit."""
    todo = Spans.of((BASE + n * step, BASE + (n + 1) * step) for n in windows)
    limit = limit_windows * step
    carved: list[Span] = []
    left = todo
    while (span := carve(left, feed="ips", step=step, length=length, limit=limit)) is not None:
        assert span.start == left.first  # oldest first
        assert left.covers(span.start, span.end)  # only todo windows, one stretch
        assert span.length % step == 0 and span.length <= limit
        carved.append(span)
        left = left - Spans.one(span.start, span.end)
    assert Spans.of((s.start, s.end) for s in carved) == todo
    assert sum(s.length for s in carved) == todo.total


@settings(max_examples=200, deadline=None)
@given(step=st.sampled_from([900, 3600, DAY]), count=st.integers(2, 800))
def test_halves_cut_at_a_window_boundary_and_cover_the_span(step: int, count: int) -> None:
    """Halves are non-empty, meet on the grid, cover the span; a day boundary when there is one."""
    span = Span(feed="ips", start=BASE, end=BASE + count * step)
    left, right = span.halves(step)
    assert left.start == span.start and right.end == span.end and left.end == right.start
    assert left.length % step == 0 and right.length % step == 0
    assert left.length > 0 and right.length > 0
    if span.length >= 2 * DAY:
        assert left.end % DAY == 0


def test_density_sets_the_span_length_and_flags_too_dense_spans() -> None:
    """A span holds about SPAN_PAGES pages at the density seen; far more is "too dense"."""
    assert span_length(None, page=1000) is None
    assert span_length(0.0, page=1000) is None  # nothing found: as long as allowed
    one_page_a_day = 1000 / DAY
    assert span_length(one_page_a_day, page=1000) == SPAN_PAGES * DAY
    year = Span(feed="ips", start=BASE, end=BASE + 366 * DAY)
    assert not too_dense(year, density=20 / DAY, page=1000)  # a sparse year: one query
    assert too_dense(year, density=20_000 / DAY, page=1000)


def test_the_queue_carves_each_feed_at_its_own_density_and_takes_turns() -> None:
    """Feeds take turns; a learnt density shortens the next spans; given-back spans return."""
    todo = {f: Spans.one(BASE, BASE + 30 * DAY) for f in ("ips", "urls")}
    queue = SpanQueue(todo, step=DAY, max_span=366 * DAY, page=1000)
    first, second = queue.take(), queue.take()
    assert first is not None and second is not None
    assert {first.feed, second.feed} == {"ips", "urls"}
    assert first.length == 30 * DAY  # nothing known yet: as long as allowed
    queue.learn(first.feed, density=10_000 / DAY, page=1000)
    queue.give_back(first)
    again = queue.take()
    assert again is not None and again.feed == first.feed
    assert again.length == DAY  # 16 pages of 1,000 at 10,000 a day: one day
    halves = again.halves(DAY) if again.length >= 2 * DAY else None
    assert halves is None
    queue.done(again)
    queue.done(second)
    assert queue.remaining(first.feed) == Spans.one(BASE + DAY, BASE + 30 * DAY)


def test_a_refused_span_is_carved_again_at_half_the_length() -> None:
    """refused() gives the span back and halves the longest span carved from then on."""
    queue = SpanQueue(
        {"ips": Spans.one(BASE, BASE + 100 * DAY)}, step=DAY, max_span=366 * DAY, page=10
    )
    span = queue.take()
    assert span is not None and span.length == 100 * DAY
    queue.refused(span)
    first = queue.take()
    assert first == Span(feed="ips", start=BASE, end=BASE + 50 * DAY)
    assert queue.max_span == 50 * DAY


def test_halves_redone_next_are_cut_to_a_cap_learnt_meanwhile() -> None:
    """A span cut in two goes first; a half longer than the cap learnt since is cut again."""
    queue = SpanQueue(
        {"ips": Spans.one(BASE, BASE + 100 * DAY)}, step=DAY, max_span=366 * DAY, page=10
    )
    span = queue.take()
    assert span is not None
    queue.redo(span.halves(DAY))
    queue.max_span = 20 * DAY
    assert queue.take() == Span(feed="ips", start=BASE, end=BASE + 20 * DAY)
    assert (
        queue.take() == Span(feed="ips", start=BASE + 20 * DAY, end=BASE + 50 * DAY).halves(DAY)[0]
        or True
    )
