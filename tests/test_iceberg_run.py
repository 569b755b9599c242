"""`harvester run --table-format iceberg`: exact tables, few snapshots, manifest and table agreeing.

Read back with pyiceberg's scan and DuckDB's ``iceberg_scan``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester.iceberg.catalog import open_catalog
from harvester.iceberg.tables import load_table
from harvester.sim.data import DatasetSpec
from harvester.sim.server import SimulatorThread

from cli import SIM_KEY, cli
from harvesting import harvest
from icebergcheck import assert_same, duckdb_connection, duckdb_items, pyiceberg_items

START, END = datetime(2024, 1, 30, tzinfo=UTC), datetime(2024, 2, 3, tzinfo=UTC)
FEEDS = ["ips", "domains"]


def run(url: str, out: Path, **options: Any) -> Any:
    merged = {
        "feeds": ",".join(FEEDS),
        "after": START.date().isoformat(),
        "before": END.date().isoformat(),
        "confidence": 0,
        "severity": 0,
        "table_format": "iceberg",
        **options,
    }
    return harvest(url, str(out), **merged)


def tables(out: Path) -> dict[str, Any]:
    lake = open_catalog(str(out), None)
    found = {feed: load_table(lake, feed) for feed in FEEDS}
    assert all(t is not None for t in found.values())
    return found


def want(server: SimulatorThread, feed: str) -> list[dict[str, Any]]:
    return server.dataset.truth(feed, START, END, confidence=0, severity=0)


def assert_exact(server: SimulatorThread, out: Path) -> None:
    con = duckdb_connection()
    for feed, table in tables(out).items():
        assert_same(pyiceberg_items(table), want(server, feed), f"{feed} by pyiceberg")
        assert_same(duckdb_items(con, table.location()), want(server, feed), f"{feed} by DuckDB")


def snapshots(out: Path) -> dict[str, int]:
    return {feed: len(table.metadata.snapshots) for feed, table in tables(out).items()}


def test_an_iceberg_run_is_exact_and_a_rerun_adds_no_snapshot(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Both readers see exactly the simulator's records; running again changes nothing."""
    first = run(sim.url, tmp_path)
    assert first.ok
    assert_exact(sim, tmp_path)
    before = snapshots(tmp_path)
    assert all(n <= 2 for n in before.values())  # one group: one commit a feed
    again = run(sim.url, tmp_path)
    assert again.ok and all(s.counters.requests == 0 for s in again.feeds.values())
    assert snapshots(tmp_path) == before
    # the manifest records which snapshot committed each window
    part = json.loads((tmp_path / "_manifest" / "ips" / "2024-01.json").read_text())
    assert all(isinstance(w[6], dict) and w[6]["snapshot"] for w in part["windows"] if w[3])


def test_force_replaces_windows_in_one_snapshot_a_feed_and_duplicates_nothing(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """--force: the same records, no duplicates, and the unchanged windows commit nothing."""
    assert run(sim.url, tmp_path).ok
    before = snapshots(tmp_path)
    forced = run(sim.url, tmp_path, force=True)
    assert forced.ok
    assert_exact(sim, tmp_path)
    # every window brought back exactly what the table held: no snapshot at all
    assert snapshots(tmp_path) == before
    assert sum(s.unchanged for s in forced.feeds.values()) == len(FEEDS) * 4


def test_a_sparse_stretch_of_many_windows_is_a_few_commits(make_sim: Any, tmp_path: Path) -> None:
    """Ninety days of 1h windows (2,160 windows a feed): a handful of snapshots, not thousands."""
    server = make_sim(max_limit=500, dataset=DatasetSpec(seed=5, rows_per_day=5))
    result = harvest(
        server.url,
        str(tmp_path),
        feeds="ips",
        after="2024-01-01",
        before="2024-03-31",
        window="1h",
        confidence=0,
        severity=0,
        table_format="iceberg",
    )
    assert result.ok and result.feeds["ips"].done == 90 * 24
    table = load_table(open_catalog(str(tmp_path), None), "ips")
    assert table is not None and len(table.metadata.snapshots) <= 3
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 31, tzinfo=UTC)
    truth = server.dataset.truth("ips", start, end, confidence=0, severity=0)
    assert_same(pyiceberg_items(table), truth, "ips")


def test_after_a_rollback_the_lost_windows_are_harvested_again(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """A rollback past a run's snapshot: those windows are no longer done, and come back."""
    first = run(sim.url, tmp_path, before="2024-02-01")
    assert first.ok
    table = tables(tmp_path)["ips"]
    keep = table.metadata.current_snapshot_id
    assert run(sim.url, tmp_path).ok  # adds 2024-02-01..02
    table.refresh()
    with table.manage_snapshots() as manage:
        manage.rollback_to_snapshot(keep)
    again = run(sim.url, tmp_path)
    assert again.ok
    assert again.feeds["ips"].done == 2 and again.feeds["domains"].done == 0
    assert_exact(sim, tmp_path)


def test_one_format_per_lake(sim: SimulatorThread, tmp_path: Path) -> None:
    """An Iceberg run into a Hive lake (and the reverse) is refused, naming both formats."""
    hive, ice = tmp_path / "hive", tmp_path / "ice"
    base = ["run", "--after", "2024-01-30", "--before", "2024-01-31", "--base-url", sim.url]
    assert cli([*base, "--out", str(hive)]).returncode == 0
    refused = cli([*base, "--out", str(hive), "--table-format", "iceberg"])
    assert refused.returncode == 2 and "holds hive tables" in refused.stderr
    assert cli([*base, "--out", str(ice), "--table-format", "iceberg"]).returncode == 0
    refused = cli([*base, "--out", str(ice)])
    assert refused.returncode == 2 and "holds iceberg tables" in refused.stderr


@pytest.mark.slow
def test_kill_then_resume_and_three_shards_at_once_are_exact(make_sim: Any, tmp_path: Path) -> None:
    """SIGKILL mid-run then resume; three shards committing to one SQLite catalog at once."""
    server = make_sim(max_limit=10, latency=0.02, dataset=DatasetSpec(seed=11, rows_per_day=90))
    out = tmp_path / "lake"
    args = ["run", "--after", START.date().isoformat(), "--before", END.date().isoformat()]
    args += ["--out", str(out), "--base-url", server.url, "--feeds", ",".join(FEEDS)]
    args += ["--confidence", "0", "--severity", "0", "--table-format", "iceberg"]
    args += ["--commit-every", "0.2", "--max-span", "1d", "--concurrency", "2", "--no-progress"]
    env = {**os.environ, "THREATGRID_API_KEY": SIM_KEY}
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "harvester", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert cli(args).returncode == 0
    assert_exact(server, out)

    sharded = tmp_path / "sharded"
    shard_args = (
        [*args[:-8], "--out", str(sharded)]
        if False
        else [a if a != str(out) else str(sharded) for a in args]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "harvester", *shard_args, "--shard", f"{i}/3"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    assert_exact(server, sharded)


def test_ddl_for_an_iceberg_lake_gives_views_that_see_later_runs(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """`ddl --table-format iceberg --engine duckdb`: views made once show the next run's rows."""
    assert run(sim.url, tmp_path, before="2024-02-01").ok
    printed = cli(
        ["ddl", "--out", str(tmp_path), "--engine", "duckdb", "--table-format", "iceberg"]
    )
    assert printed.returncode == 0, printed.stderr
    con = duckdb_connection()
    con.execute(printed.stdout)
    assert run(sim.url, tmp_path).ok  # a later run, after the views were made
    for feed in FEEDS:
        assert_same(duckdb_items(con, feed, view=True), want(sim, feed), f"{feed} view")
    athena = cli(["ddl", "--out", str(tmp_path), "--engine", "athena", "--table-format", "iceberg"])
    assert athena.returncode == 0 and "Athena finds Iceberg tables only in the AWS Glue" in (
        athena.stdout
    )


def test_verify_and_repair_refuse_an_iceberg_lake(sim: SimulatorThread, tmp_path: Path) -> None:
    """`verify` and `run --repair` refuse Iceberg tables in one line: no check of nothing."""
    assert run(sim.url, tmp_path, after="2024-01-01", before="2024-01-02").ok
    checked = cli(["verify", "--out", str(tmp_path)])
    assert checked.returncode == 2
    assert "Hive lakes only" in checked.stderr and "Traceback" not in checked.stderr
    args = ["run", "--out", str(tmp_path), "--after", "2024-01-01", "--before", "2024-01-02"]
    repaired = cli([*args, "--table-format", "iceberg", "--repair", "--base-url", sim.url])
    assert repaired.returncode == 2
    assert "drop --repair" in repaired.stderr and "Traceback" not in repaired.stderr
