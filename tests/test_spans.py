"""Adaptive query spans against the simulator: exact whatever the density does, and cheap.

Requests are counted by the simulator and compared with the fewest pages that hold the
records (per feed, ceil(records / the server's largest page)).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harvester.sim.data import DatasetSpec
from harvester.sim.server import Faults, SimulatorThread

from harvesting import harvest
from lakecheck import assert_lake_exact

START = datetime(2024, 3, 1, tzinfo=UTC)


def day(n: int) -> str:
    return (START + timedelta(days=n)).date().isoformat()


def truth(server: SimulatorThread, feeds: list[str], days: int) -> dict[str, list[Any]]:
    end = START + timedelta(days=days)
    return {f: server.dataset.truth(f, START, end, confidence=0, severity=0) for f in feeds}


def fewest_pages(want: dict[str, list[Any]], page: int) -> int:
    return sum(math.ceil(len(items) / page) for items in want.values())


def run(server: SimulatorThread, out: Path, feeds: list[str], days: int, **options: Any) -> Any:
    return harvest(
        server.url,
        str(out),
        feeds=",".join(feeds),
        after=day(0),
        before=day(days),
        confidence=0,
        severity=0,
        **options,
    )


def test_a_sparse_stretch_is_one_query_and_costs_its_pages(make_sim, tmp_path: Path) -> None:
    """Ninety sparse days of two feeds: a query each, requests within 2x the fewest pages."""
    server = make_sim(max_limit=200, dataset=DatasetSpec(seed=5, rows_per_day=6))
    feeds, days = ["ips", "urls"], 90
    result = run(server, tmp_path, feeds, days)
    assert result.ok
    want = truth(server, feeds, days)
    assert_lake_exact(str(tmp_path), want)
    requests = server.stats.requests
    assert requests <= 2 * fewest_pages(want, 200) + 1  # and the preflight
    files = sorted(p.parent.name for p in (tmp_path / "ips").rglob("*.parquet"))
    assert len(files) == len(set(files))  # one file per day at most


@pytest.mark.parametrize("shape", ["sparse-dense-sparse", "dense-sparse-dense"])
def test_density_changing_mid_span_is_exact_and_cheap(make_sim, tmp_path: Path, shape: str) -> None:
    """A sparse stretch that turns dense (and the reverse): exact, within 2x the fewest pages."""
    dense = {day(n): 2500 for n in (range(10, 14) if shape.startswith("sparse") else range(0, 3))}
    if shape.startswith("dense"):
        dense.update({day(n): 2500 for n in range(27, 30)})
    server = make_sim(max_limit=250, dataset=DatasetSpec(seed=8, rows_per_day=4, dense_days=dense))
    feeds, days = ["domains"], 30
    result = run(server, tmp_path, feeds, days)
    assert result.ok
    want = truth(server, feeds, days)
    assert_lake_exact(str(tmp_path), want)
    # a few requests are spent learning: a dense first page gives its span back once
    assert server.stats.requests <= 2 * fewest_pages(want, 250) + 4


def test_a_span_the_server_refuses_as_too_long_is_split_and_later_ones_capped(
    make_sim, tmp_path: Path
) -> None:
    """The server refuses more than 10 days: spans are cut, then carved shorter; exact."""
    server = make_sim(
        max_limit=500, max_span=timedelta(days=10), dataset=DatasetSpec(seed=5, rows_per_day=6)
    )
    feeds, days = ["paths", "ips"], 80
    result = run(server, tmp_path, feeds, days)
    assert result.ok
    assert_lake_exact(str(tmp_path), truth(server, feeds, days))
    refused = server.stats.faults.get("max_span", 0)
    assert 0 < refused <= 8  # learnt once, not once per stretch


def test_deep_offsets_the_server_refuses_split_the_span(make_sim, tmp_path: Path) -> None:
    """Offsets past 150 get a 400: a dense span is cut until its pages fit; exact."""
    server = make_sim(
        max_limit=25,
        max_offset=150,
        dataset=DatasetSpec(seed=6, rows_per_day=20, dense_days={day(3): 900}),
    )
    feeds, days = ["artifacts"], 8
    result = run(server, tmp_path, feeds, days, window="1h")
    assert result.ok
    assert_lake_exact(str(tmp_path), truth(server, feeds, days))


@pytest.mark.parametrize(
    ("after_inclusive", "before_inclusive"), [(True, False), (False, True), (True, True)]
)
@pytest.mark.parametrize("window", ["1h", "1d"])
def test_records_on_every_span_edge_land_once(
    make_sim, tmp_path: Path, after_inclusive: bool, before_inclusive: bool, window: str
) -> None:
    """Records at 00:00:00 and 23:59:59 each day, whatever the server's bound semantics."""
    server = make_sim(
        max_limit=40,
        after_inclusive=after_inclusive,
        before_inclusive=before_inclusive,
        dataset=DatasetSpec(seed=9, rows_per_day=30, dense_days={day(4): 600}),
    )
    feeds, days = ["registry_keys", "network_streams"], 9
    assert run(server, tmp_path, feeds, days, window=window).ok
    assert_lake_exact(str(tmp_path), truth(server, feeds, days))


def test_records_added_while_a_long_span_is_paged_are_neither_lost_nor_doubled(
    make_sim, tmp_path: Path
) -> None:
    """New records arrive at the head between pages: the query starts again; exact."""
    server = make_sim(
        max_limit=20,
        faults=Faults(insert_while_paging=2, insert_limit=12),
        dataset=DatasetSpec(seed=4, rows_per_day=25),
    )
    feeds, days = ["urls"], 6
    result = run(server, tmp_path, feeds, days, prefetch=1)
    assert result.ok
    assert server.stats.rows_inserted > 0
    assert_lake_exact(str(tmp_path), truth(server, feeds, days))  # truth holds the new ones


def test_one_unstorable_record_fails_only_its_own_window(make_sim, tmp_path: Path) -> None:
    """A lone surrogate in a sparse 60-day span: the span is cut down; one window fails."""
    poisoned = day(37)
    spec = DatasetSpec(seed=5, rows_per_day=6, lone_surrogates=(("ips", poisoned),))
    server = make_sim(max_limit=500, dataset=spec)
    feeds, days = ["ips"], 60
    result = run(server, tmp_path, feeds, days)
    assert [(f.start, f.error) for f in result.failures] == [(f"{poisoned}T00:00:00Z", "DataError")]
    assert "lone UTF-16 surrogate" in result.failures[0].reason
    want = truth(server, feeds, days)
    kept = [i for i in want["ips"] if not i["timestamp"].startswith(poisoned)]
    assert_lake_exact(str(tmp_path), {"ips": kept})
    assert result.feeds["ips"].done == days - 1
    # cut in halves down to the window: a handful of queries, not one per day
    assert server.stats.requests <= 2 * math.ceil(math.log2(days)) + 4
