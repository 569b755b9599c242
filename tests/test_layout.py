"""Object names of the Hive layout, and the day arithmetic behind them."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given
from hypothesis import strategies as st

from harvester.lake.layout import day_of, day_start, is_legacy, main_key, stamp


@given(st.dates(min_value=date(1970, 1, 1), max_value=date(9999, 12, 31)))
def test_day_start_is_midnight_utc_and_day_of_inverts_it(day: date) -> None:
    """Day arithmetic agrees with datetime for every day the lake can hold."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert day_start(day) == int(midnight.timestamp())
    assert day_of(day_start(day)) == day
    assert day_of(day_start(day) + 86_399) == day


def test_a_days_main_file_is_named_after_its_midnight() -> None:
    """The main file of ips on 2024-01-15 is part-20240115T000000Z; not a legacy name."""
    key = main_key("ips", date(2024, 1, 15))
    assert key == "ips/dt=2024-01-15/part-20240115T000000Z.parquet"
    assert stamp(day_start(date(2024, 1, 15)) + 3600) == "20240115T010000Z"
    assert not is_legacy(key)
    assert is_legacy("ips/dt=2024-01-15/part-20240115T000000Z_20240115T010000Z.parquet")
