"""End to end: harvest from the simulator over HTTP, read the lake back with DuckDB."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harvester.errors import AuthError, ConfigError
from harvester.sim.data import DatasetSpec
from harvester.sim.server import Faults, SimulatorThread

from harvesting import harvest
from lakecheck import assert_lake_exact, feeds_all

JAN1 = datetime(2024, 1, 1, tzinfo=UTC)
JAN4 = datetime(2024, 1, 4, tzinfo=UTC)


def truth(
    server: SimulatorThread,
    feeds: list[str],
    start: datetime = JAN1,
    end: datetime = JAN4,
    **filters: object,
) -> dict[str, list[dict[str, object]]]:
    return {f: server.dataset.truth(f, start, end, **filters) for f in feeds}


def files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_all_feeds_exact_with_scores_at_zero(sim: SimulatorThread, tmp_path: Path) -> None:
    """Three days of all seven feeds land exactly once, partitioned by their own dates."""
    result = harvest(sim.url, str(tmp_path), confidence=0, severity=0)
    assert result.ok
    counts = assert_lake_exact(str(tmp_path), truth(sim, feeds_all(), confidence=0, severity=0))
    assert all(n > 0 for n in counts.values())
    assert sum(s.rows for s in result.feeds.values()) == sum(counts.values())


def test_api_default_scores_apply_when_not_given(sim: SimulatorThread, tmp_path: Path) -> None:
    """Without --confidence/--severity the API's default of 80 decides, and the lake agrees."""
    assert harvest(sim.url, str(tmp_path), feeds="ips,urls").ok
    full = truth(sim, ["ips", "urls"], confidence=0, severity=0)
    default = truth(sim, ["ips", "urls"])
    assert sum(map(len, default.values())) < sum(map(len, full.values()))
    assert_lake_exact(str(tmp_path), default)


@pytest.mark.parametrize("after_inclusive", [True, False])
@pytest.mark.parametrize("before_inclusive", [True, False])
@pytest.mark.parametrize("window", ["1h", "6h", "1d"])
def test_boundary_records_once_whatever_the_server_bounds(
    make_sim, tmp_path: Path, after_inclusive: bool, before_inclusive: bool, window: str
) -> None:
    """Records exactly on window edges are stored once, whether after/before are inclusive."""
    server = make_sim(
        after_inclusive=after_inclusive, before_inclusive=before_inclusive, max_limit=40
    )
    out = str(tmp_path / "lake")
    result = harvest(
        server.url,
        out,
        feeds="domains,registry_keys",
        window=window,
        before="2024-01-03",
        confidence=0,
        severity=0,
    )
    assert result.ok
    end = datetime(2024, 1, 3, tzinfo=UTC)
    want = truth(server, ["domains", "registry_keys"], JAN1, end, confidence=0, severity=0)
    on_edge = [i for i in want["domains"] if str(i["timestamp"]).endswith(":00:00Z")]
    assert on_edge, "the simulator should put records exactly on hour edges"
    assert_lake_exact(out, want)


def test_multi_day_window_splits_into_date_partitions(sim: SimulatorThread, tmp_path: Path) -> None:
    """A 7-day window writes one file per date, each under its own dt partition."""
    result = harvest(
        sim.url,
        str(tmp_path),
        feeds="paths",
        window="7d",
        after="2024-01-04",
        before="2024-01-11",
        confidence=0,
        severity=0,
    )
    assert result.ok
    start, end = datetime(2024, 1, 4, tzinfo=UTC), datetime(2024, 1, 11, tzinfo=UTC)
    want = truth(sim, ["paths"], start, end, confidence=0, severity=0)
    assert_lake_exact(str(tmp_path), want)
    days = {str(i["timestamp"])[:10] for i in want["paths"]}
    assert len(days) > 3
    written = sorted(p.parent.name for p in (tmp_path / "paths").glob("dt=*/*.parquet"))
    assert written == sorted(f"dt={d}" for d in days)


def test_rerun_skips_complete_windows_and_changes_nothing(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """A second identical run skips every window and leaves every file untouched."""
    assert harvest(sim.url, str(tmp_path), feeds="ips,domains").ok
    before = files(tmp_path)
    again = harvest(sim.url, str(tmp_path), feeds="ips,domains")
    assert again.ok
    assert all(s.skipped == s.windows and s.counters.requests == 0 for s in again.feeds.values())
    assert files(tmp_path) == before


def test_changed_query_replaces_windows_without_duplicates(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Re-harvesting with other scores replaces each window's files: no duplicates."""
    assert harvest(sim.url, str(tmp_path), feeds="urls").ok
    rerun = harvest(sim.url, str(tmp_path), feeds="urls", confidence=0, severity=0)
    assert rerun.ok and rerun.feeds["urls"].done == 3
    assert_lake_exact(str(tmp_path), truth(sim, ["urls"], confidence=0, severity=0))


def test_lake_is_exact_under_every_fault_at_once(make_sim, tmp_path: Path) -> None:
    """429s, 5xx, dropped connections, truncated and HTML bodies: the lake is still exact."""
    faults = Faults(
        seed=3,
        rate_limit=400,
        error_rate=0.08,
        drop_rate=0.05,
        truncate_rate=0.05,
        html_rate=0.03,
        missing_items_rate=0.03,
    )
    server = make_sim(faults=faults, max_limit=30)
    result = harvest(
        server.url,
        str(tmp_path),
        feeds="ips,artifacts,network_streams",
        confidence=0,
        severity=0,
        attempts=30,
    )
    assert result.ok, result.failures
    assert sum(s.counters.retries for s in result.feeds.values()) > 5
    assert_lake_exact(
        str(tmp_path),
        truth(server, ["ips", "artifacts", "network_streams"], confidence=0, severity=0),
    )


def test_exhausted_retries_fail_the_window_and_a_rerun_finishes(make_sim, tmp_path: Path) -> None:
    """A feed that keeps failing is reported failed; the others complete; a re-run finishes it."""
    broken = make_sim(faults=Faults(fail_always=("urls",)))
    result = harvest(broken.url, str(tmp_path), feeds="urls,domains", attempts=3)
    assert not result.ok
    assert result.feeds["urls"].failed == 3 and result.feeds["domains"].done == 3
    assert {f.feed for f in result.failures} == {"urls"}
    healthy = make_sim()
    rerun = harvest(healthy.url, str(tmp_path), feeds="urls,domains")
    assert rerun.ok and rerun.feeds["domains"].skipped == 3 and rerun.feeds["urls"].done == 3
    assert_lake_exact(str(tmp_path), truth(healthy, ["urls", "domains"]))


def test_refused_key_stops_everything_and_writes_nothing(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """A 401 stops the run at once with a message naming THREATGRID_API_KEY; no manifest."""
    with pytest.raises(AuthError, match="THREATGRID_API_KEY") as info:
        harvest(sim.url, str(tmp_path / "lake"), key="wrong-key-123")
    assert "wrong-key-123" not in str(info.value)
    assert not (tmp_path / "lake" / "_manifest").exists()


def test_server_ignoring_offset_fails_the_window(make_sim, tmp_path: Path) -> None:
    """A server that repeats a page makes the window fail instead of looping forever."""
    server = make_sim(faults=Faults(repeat_pages=True), max_limit=10)
    result = harvest(
        server.url, str(tmp_path), feeds="domains", confidence=0, severity=0, before="2024-01-02"
    )
    assert not result.ok
    assert "same page" in result.failures[0].reason


def test_changing_the_window_grid_is_refused(sim: SimulatorThread, tmp_path: Path) -> None:
    """Re-running a 1d lake with 6h windows is a clear error, not silent duplicates."""
    assert harvest(sim.url, str(tmp_path), feeds="ips", before="2024-01-02").ok
    with pytest.raises(ConfigError, match="--window the lake was built with"):
        harvest(sim.url, str(tmp_path), feeds="ips", before="2024-01-02", window="6h")


def test_query_auth_mode_works(sim: SimulatorThread, tmp_path: Path) -> None:
    """--auth query sends api_key as a parameter, and the lake is the same."""
    assert harvest(sim.url, str(tmp_path), feeds="domains", auth="query").ok
    assert_lake_exact(str(tmp_path), truth(sim, ["domains"]))


def test_no_staging_files_remain(sim: SimulatorThread, tmp_path: Path) -> None:
    """After a run no dot-file or temp file is left anywhere in the lake."""
    assert harvest(sim.url, str(tmp_path), feeds="paths").ok
    leftovers = [p for p in tmp_path.rglob(".*")]
    assert leftovers == []
    assert os.listdir(tmp_path / "_manifest" / "paths")


def test_mistyped_null_and_unknown_values_survive_exactly(make_sim, tmp_path: Path) -> None:
    """Scores sent as strings, floats, nulls and undocumented fields all land, kept in extra."""
    spec = DatasetSpec(
        seed=4, rows_per_day=150, mistyped_rate=0.1, extra_field_rate=0.1, null_rate=0.1
    )
    server = make_sim(dataset=spec)
    feeds = ["ips", "artifacts", "network_streams", "domains"]
    assert harvest(server.url, str(tmp_path), feeds=",".join(feeds), confidence=0, severity=0).ok
    assert_lake_exact(str(tmp_path), truth(server, feeds, confidence=0, severity=0))
    import duckdb

    kept = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/ips/*/*.parquet') "
        "WHERE json_extract(extra, '$.confidence') IS NOT NULL AND confidence IS NULL"
    ).fetchone()
    assert kept is not None
    assert kept[0] > 0


def test_small_windows_over_sparse_days_cost_their_pages_and_one_file_a_day(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Quarter-hour windows of sparse days: one query for all, one file a day, one partition."""
    result = harvest(sim.url, str(tmp_path), feeds="registry_keys", window="15m")
    summary = result.feeds["registry_keys"]
    assert result.ok
    assert summary.done == 3 * 96
    # the preflight, then one paged query over the three days: only its pages
    assert summary.counters.requests <= 1 + summary.pages + 1
    assert_lake_exact(str(tmp_path), truth(sim, ["registry_keys"]))
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "registry_keys").rglob("*.parquet"))
    assert [f.parent.name for f in files] == ["dt=2024-01-01", "dt=2024-01-02", "dt=2024-01-03"]
    assert [p.name for p in (tmp_path / "_manifest" / "registry_keys").iterdir()] == [
        "2024-01.json"
    ]


def test_force_reharvests_complete_windows_in_place(sim: SimulatorThread, tmp_path: Path) -> None:
    """--force harvests complete windows again, replacing their files: still exact."""
    assert harvest(sim.url, str(tmp_path), feeds="ips").ok
    again = harvest(sim.url, str(tmp_path), feeds="ips", force=True)
    assert again.ok
    assert again.feeds["ips"].done == 3
    assert again.feeds["ips"].skipped == 0
    assert_lake_exact(str(tmp_path), truth(sim, ["ips"]))
