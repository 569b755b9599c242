"""Sets of half-open intervals behave as sets of integers, whatever the input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harvester.intervals import Spans

pairs = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=8)


def members(spans: Spans) -> set[int]:
    return {x for s, e in spans for x in range(s, e)}


def naive(raw: list[tuple[int, int]]) -> set[int]:
    return {x for s, e in raw for x in range(s, e)}


@given(pairs)
def test_of_is_normalised_and_keeps_the_members(raw: list[tuple[int, int]]) -> None:
    """Sorted, disjoint, never touching; the same integers as the input."""
    spans = Spans.of(raw)
    assert members(spans) == naive(raw)
    for (_, end), (start, _) in zip(spans.pairs, spans.pairs[1:], strict=False):
        assert end < start
    assert all(s < e for s, e in spans)


@given(pairs, pairs)
def test_set_operations_match_python_sets(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    """Union, difference and intersection agree with sets of integers."""
    x, y = Spans.of(a), Spans.of(b)
    assert members(x | y) == naive(a) | naive(b)
    assert members(x - y) == naive(a) - naive(b)
    assert members(x & y) == naive(a) & naive(b)
    assert (x | y).total == len(naive(a) | naive(b))


@given(pairs, st.integers(0, 60), st.integers(0, 60))
def test_covers_containing_and_clip(raw: list[tuple[int, int]], lo: int, hi: int) -> None:
    """A range is covered when one interval holds it all; a point finds its interval."""
    spans = Spans.of(raw)
    held = spans.containing(lo)
    assert (held is not None) == (lo in members(spans))
    if lo < hi:
        whole = set(range(lo, hi))
        one = any(whole <= set(range(s, e)) for s, e in spans)
        assert spans.covers(lo, hi) == one
    assert members(spans.clip(lo, hi)) == {m for m in members(spans) if lo <= m < hi}


def test_json_round_trip() -> None:
    """to_json and of are inverses."""
    spans = Spans.of([(5, 9), (0, 3), (3, 4)])
    assert spans.to_json() == [[0, 4], [5, 9]]
    assert Spans.of(spans.to_json()) == spans
