"""Window planning: grid alignment, exact coverage, and the query bounds."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.errors import ConfigError
from harvester.windows import (
    SECOND,
    Window,
    floor_to,
    format_api,
    parse_api,
    parse_duration,
    parse_instant,
    plan_windows,
    query_bounds,
)

STEPS = [
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=7),
]


@st.composite
def ranges(draw: st.DrawFn) -> tuple[datetime, datetime, timedelta]:
    step = draw(st.sampled_from(STEPS))
    base = datetime(2015, 1, 1, tzinfo=UTC) + draw(st.integers(0, 4000)) * timedelta(days=1)
    start = floor_to(base + draw(st.integers(0, 200)) * step, step)
    count = draw(st.integers(1, 300))
    return start, start + count * step, step


@given(ranges())
def test_windows_tile_the_range_exactly(case: tuple[datetime, datetime, timedelta]) -> None:
    """Windows are contiguous, non-overlapping, grid-sized and cover [after, before)."""
    after, before, step = case
    windows = plan_windows(after, before, step)
    assert windows[0].start == after
    assert windows[-1].end == before
    for left, right in itertools.pairwise(windows):
        assert left.end == right.start
    assert all(w.end - w.start == step for w in windows)


@given(ranges(), st.integers(0, 10**9))
def test_every_instant_has_exactly_one_window(
    case: tuple[datetime, datetime, timedelta], offset: int
) -> None:
    """Any whole-second instant in the range belongs to exactly one window."""
    after, before, step = case
    instant = after + timedelta(seconds=offset % int((before - after).total_seconds()))
    owners = [w for w in plan_windows(after, before, step) if w.contains(instant)]
    assert len(owners) == 1


@given(ranges())
def test_overlapping_ranges_cut_the_same_windows(
    case: tuple[datetime, datetime, timedelta],
) -> None:
    """Two runs over overlapping ranges agree on the windows they share."""
    after, before, step = case
    whole = set(plan_windows(after, before + 5 * step, step))
    assert set(plan_windows(after, before, step)) <= whole


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC)
    )
)
def test_query_bounds_cover_the_window_under_any_bound_semantics(start: datetime) -> None:
    """After is one second early and before is the end: inclusive or not, nothing is missed."""
    window = Window(start=start, end=start + timedelta(hours=1))
    after, before = query_bounds(window)
    assert after == format_api(start - SECOND)
    assert before == format_api(window.end)
    lo = parse_instant(after)
    hi = parse_instant(before)
    # exclusive after still admits start; exclusive before still admits end - 1s
    assert lo < window.start and window.end - SECOND < hi


def test_unaligned_range_is_refused_with_a_fix() -> None:
    """A range off the window grid is a one-line error that suggests aligned bounds."""
    with pytest.raises(ConfigError, match="not on the 1d window grid; use 2024-01-01T00:00:00Z"):
        plan_windows(
            parse_instant("2024-01-01T10:00:00Z"), parse_instant("2024-01-03"), timedelta(days=1)
        )


def test_empty_or_reversed_range_is_refused() -> None:
    """--after must be strictly before --before."""
    day = parse_instant("2024-01-01")
    with pytest.raises(ConfigError, match="is not before"):
        plan_windows(day, day, timedelta(days=1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15", "2024-01-15T00:00:00Z"),
        ("2024-01-15T09:00:00Z", "2024-01-15T09:00:00Z"),
        ("2024-01-15T09:00:00z", "2024-01-15T09:00:00Z"),
        ("2024-01-15T10:00:00+01:00", "2024-01-15T09:00:00Z"),
        ("2024-01-15T04:30:00-04:30", "2024-01-15T09:00:00Z"),
    ],
)
def test_instants_normalise_to_utc_api_format(text: str, expected: str) -> None:
    """Z, offsets and bare dates all become the API's exact YYYY-MM-DDTHH:MM:SSZ."""
    assert format_api(parse_instant(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["2024-13-01", "yesterday", "2024-01-15T09:00:00", "2024-01-15 9am", "2024-01-15T09:00:00.5Z"],
)
def test_bad_instants_are_config_errors(text: str) -> None:
    """Unparseable, zone-less or sub-second instants are refused with a hint."""
    with pytest.raises(ConfigError):
        parse_instant(text, name="--after")


@pytest.mark.parametrize(
    ("text", "minutes"), [("15m", 15), ("1h", 60), ("6h", 360), ("1d", 1440), ("7d", 10080)]
)
def test_durations(text: str, minutes: int) -> None:
    """Window sizes that divide a day, or are whole days, parse."""
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["7m", "5h", "36h", "0d", "1w", "d", "-1d", "1.5h"])
def test_bad_durations(text: str) -> None:
    """Sizes that do not tile a day are refused."""
    with pytest.raises(ConfigError, match="--window"):
        parse_duration(text)


def test_window_key_round_trips_and_is_path_safe() -> None:
    """Window keys hold no ':' (Hadoop/Glue reject it) and parse back."""
    window = Window(start=parse_instant("2024-01-01"), end=parse_instant("2024-01-01T06:00:00Z"))
    assert ":" not in window.key
    assert Window.from_key(window.key) == window


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)))
def test_parse_api_inverts_format_api(moment: datetime) -> None:
    """Every instant the API is sent comes back from its own text, to the second."""
    instant = moment.replace(microsecond=0, tzinfo=UTC)
    assert parse_api(format_api(instant)) == instant


@pytest.mark.parametrize(
    "text",
    [
        "2024-1-01T 00:00:00Z",
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00+01Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T23:59:60Z",
        "2024-01-01T00:00:00.5Z",
        "2024-01-01T00:00:00",
        "٢٠٢٤-01-01T00:00:00Z",
    ],
)
def test_parse_api_refuses_anything_but_the_documented_form(text: str) -> None:
    """Loose layouts, offsets, fractions and seconds that do not exist are refused."""
    with pytest.raises(ValueError, match="is not YYYY-MM-DDTHH:MM:SSZ"):
        parse_api(text)
