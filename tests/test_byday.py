"""A spool split by day (harvester.lake.byday) holds exactly what selecting each day would."""

from __future__ import annotations

import itertools
import tempfile
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.intervals import Spans
from harvester.lake import days
from harvester.lake.byday import DayRows, split
from harvester.lake.layout import day_start
from harvester.lake.spool import Spool

SCHEMA = pa.schema([("timestamp", days.SECONDS), ("id", pa.int64())])
FIRST = date(2024, 2, 27)  # a leap day inside the range
SPAN = 5 * days.DAY
STEPS = (900, 3600, 6 * 3600, days.DAY, 7 * days.DAY)


def table_of(stamps: list[int], cuts: list[int]) -> pa.Table:
    """Rows with these stamps (ids are their positions), in batches cut at ``cuts``."""
    base = day_start(FIRST)
    whole = pa.table(
        {
            "timestamp": pa.array([base + s for s in stamps], pa.int64()).cast(days.SECONDS),
            "id": pa.array(range(len(stamps)), pa.int64()),
        }
    )
    bounds = sorted({0, len(stamps), *(c for c in cuts if 0 < c < len(stamps))})
    batches = [
        b
        for lo, hi in itertools.pairwise(bounds)
        for b in whole.slice(lo, hi - lo).to_batches()
    ]
    return pa.Table.from_batches(batches, schema=SCHEMA)


def ids(table: pa.Table) -> list[int]:
    return sorted(table.column("id").to_pylist())


def day_span(day: date) -> Spans:
    return Spans.one(day_start(day), day_start(day) + days.DAY)


stamps_st = st.lists(st.integers(0, SPAN - 1), max_size=60)
# Mostly newest first, as pages come, sometimes shuffled within a batch.
order_st = st.sampled_from(["newest", "oldest", "as drawn"])


@settings(max_examples=150, deadline=None)
@given(
    stamps=stamps_st,
    cuts=st.lists(st.integers(0, 60), max_size=4),
    step=st.sampled_from(STEPS),
    order=order_st,
)
def test_split_is_each_days_selection(
    stamps: list[int], cuts: list[int], step: int, order: str
) -> None:
    if order != "as drawn":
        stamps = sorted(stamps, reverse=order == "newest")
    table = table_of(stamps, cuts)
    parts = split(table, step)
    for offset in range(-1, 7):
        day = FIRST + timedelta(days=offset)
        expected = days.select(table, day_span(day))
        part = parts.get(day)
        if not expected.num_rows:
            assert part is None or not sum(b.num_rows for b in part.batches)
            continue
        assert part is not None
        got = pa.Table.from_batches(part.batches, schema=SCHEMA)
        assert ids(got) == ids(expected)
        assert part.counts == days.window_counts(expected, step)
    assert sum(sum(b.num_rows for b in p.batches) for p in parts.values()) == table.num_rows


@settings(max_examples=80, deadline=None)
@given(
    spools_stamps=st.lists(stamps_st, min_size=1, max_size=3),
    step=st.sampled_from(STEPS),
    dropped=st.sets(st.integers(0, 40)),
)
def test_day_rows_take_equals_selecting_from_every_spool(
    spools_stamps: list[list[int]], step: int, dropped: set[int]
) -> None:
    """Each day taken once holds the rows of its windows ``wanted``, from every spool."""
    with tempfile.TemporaryDirectory() as folder:
        spools, tables = [], []
        for index, stamps in enumerate(spools_stamps):
            spool = Spool(Path(folder) / f"{index}.arrow", SCHEMA)
            table = table_of(sorted(stamps, reverse=True), [7, 20])
            # distinct ids across spools
            table = table.set_column(
                1, "id", pa.array([i + 1000 * index for i in range(table.num_rows)], pa.int64())
            )
            spool.append(table)
            spools.append(spool)
            tables.append(table)
        wanted_days = [FIRST + timedelta(days=d) for d in range(5)]
        rows = DayRows([(s, wanted_days) for s in spools], step=step, schema=SCHEMA)
        # Windows harvested: all but a few (those another run completed meanwhile).
        windows = Spans.of(
            (s, s + step)
            for n, s in enumerate(
                range(day_start(FIRST) // step * step, day_start(FIRST) + SPAN, step)
            )
            if n not in dropped
        )
        for day in wanted_days:
            wanted = windows & day_span(day)
            got, counts = rows.take(day, wanted)
            expected = days.concat([days.select(t, wanted) for t in tables], SCHEMA)
            assert ids(got) == ids(expected)
            assert counts == days.window_counts(expected, step)
            with pytest.raises(RuntimeError, match="taken already"):
                rows.take(day, wanted)  # handed out once: never a day without its rows
        assert rows.reads == len(spools)  # each read once, not once a day


def test_split_refuses_a_window_of_no_length() -> None:
    with pytest.raises(ValueError, match="positive"):
        split(table_of([1], []), 0)
