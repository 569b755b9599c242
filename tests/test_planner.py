"""Planning: batches group small windows by day, and never mix feeds or skip a gap."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.planner import Unit, group_units
from harvester.windows import DAY, Window

START = datetime(2024, 1, 1, tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(
    minutes=st.sampled_from([15, 60, 360, 1440, 10080]),
    picks=st.lists(st.tuples(st.sampled_from(["ips", "urls"]), st.integers(0, 300)), max_size=80),
)
def test_batches_cover_units_once_within_one_span(
    minutes: int, picks: list[tuple[str, int]]
) -> None:
    """Batches hold every unit once, one feed each, contiguous, inside one day (or window)."""
    step = timedelta(minutes=minutes)
    units = {
        Unit(window=Window(start=START + n * step, end=START + (n + 1) * step), feed=f)
        for f, n in picks
    }
    batches = group_units(units)
    flat = [u for b in batches for u in b.units]
    assert sorted(flat) == sorted(units)
    for batch in batches:
        windows = batch.windows
        assert all(a.end == b.start for a, b in itertools.pairwise(windows))
        span = batch.span
        assert span.end - span.start <= max(step, DAY)
        if step < DAY:
            assert span.start.date() == (span.end - timedelta(seconds=1)).date()


def test_a_sparse_day_of_small_windows_is_one_query() -> None:
    """96 quarter-hour windows of one day and feed are one batch: one query, not 96."""
    step = timedelta(minutes=15)
    units = [
        Unit(window=Window(start=START + i * step, end=START + (i + 1) * step), feed="ips")
        for i in range(96 * 3)
    ]
    batches = group_units(units)
    assert [len(b.windows) for b in batches] == [96, 96, 96]
