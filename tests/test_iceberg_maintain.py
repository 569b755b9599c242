"""``maintain`` on a real table: compaction, its conflict check, expiry and orphan grace."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyiceberg.table import Table

from harvester.errors import ConfigError
from harvester.iceberg.catalog import IcebergLake, open_catalog
from harvester.iceberg.commit import commit_windows
from harvester.iceberg.maintain import (
    MaintainOptions,
    compact,
    find_orphans,
    maintain_table,
    parse_age,
    plan_compaction,
)
from harvester.iceberg.tables import ensure_table
from harvester.sim.data import Dataset, DatasetSpec

from cli import cli
from icebergcheck import (
    assert_same,
    day,
    duckdb_connection,
    duckdb_items,
    hours,
    pyiceberg_items,
    truth,
    write_group,
)

DATA = Dataset(DatasetSpec(seed=17, rows_per_day=120))
FEED = "registry_keys"
WINDOWS = hours(day("2024-07-02"), 4)


@pytest.fixture
def lake(tmp_path: Path) -> IcebergLake:
    return open_catalog(str(tmp_path / "lake"), None, create=True)


def small_files(lake: IcebergLake) -> Table:
    """Four group commits, one 6h window each, into one day: four small files."""
    table = ensure_table(lake, FEED)
    for window in WINDOWS:
        items = truth(DATA, FEED, [window])
        assert items, "the simulator has a quiet day here: pick another"
        files = write_group(table, FEED, items)
        commit_windows(table, windows=[window], files=files, properties={})
    return table


def live(table: Table) -> set[str]:
    table.refresh()
    return {task.file.file_path for task in table.scan().plan_files()}


def check(table: Table, what: str) -> None:
    want = truth(DATA, FEED, WINDOWS)
    assert_same(pyiceberg_items(table), want, f"{what} (pyiceberg)")
    assert_same(duckdb_items(duckdb_connection(), table.location()), want, f"{what} (duckdb)")


def test_dry_run_plans_and_changes_nothing_then_the_real_run_does_it(lake: IcebergLake) -> None:
    table = small_files(lake)
    before, snapshots = live(table), len(table.metadata.snapshots)
    later = datetime.now(UTC) + timedelta(days=30)
    dry = maintain_table(table, MaintainOptions(dry_run=True), now=later)
    (planned,) = dry.compactions
    assert planned.status == "planned" and set(planned.inputs) == before
    assert len(dry.expired) == snapshots - 1
    assert live(table) == before and len(table.metadata.snapshots) == snapshots
    files_on_disk = sorted(Path(table.location()).rglob("*"))

    head = table.metadata.current_snapshot_id
    real = maintain_table(table, MaintainOptions(), now=later)
    (done,) = real.compactions
    assert done.status == "done" and live(table) == {done.output}
    # Compaction first, then expiry: the compaction's parent is old by then too, so all
    # four group commits go, and with them the only references to the small files.
    assert set(real.expired) == {*dry.expired, head}
    assert before <= {o.path for o in real.orphans}
    assert not any(Path(p).exists() for p in before)
    check(table, "after compaction, expiry and orphan removal")
    summary = table.current_snapshot().summary.additional_properties  # type: ignore[union-attr]
    assert summary["harvester.operation"] == "compact"
    assert set(files_on_disk) >= {Path(p) for p in before}  # the dry run had left them

    again = maintain_table(table, MaintainOptions(), now=later)
    assert (again.compactions, again.expired, again.orphans) == ((), (), ())


def test_compaction_gives_up_when_an_input_changed(lake: IcebergLake) -> None:
    table = small_files(lake)
    (planned,) = plan_compaction(table, small_file_bytes=1 << 30, target_file_bytes=1 << 30)
    # A writer replaces one window between the plan and the commit.
    other = ensure_table(lake, FEED)
    fewer = truth(DATA, FEED, [WINDOWS[2]])[::2]
    commit_windows(
        other, windows=[WINDOWS[2]], files=write_group(other, FEED, fewer), properties={}
    )
    outcome = compact(table, planned)
    assert outcome.status.startswith("skipped")
    assert outcome.output is None
    table.refresh()
    want = truth(DATA, FEED, WINDOWS[:2]) + fewer + truth(DATA, FEED, WINDOWS[3:])
    assert_same(pyiceberg_items(table), want, "after the refused compaction")
    compacted = list(Path(table.location(), "data").rglob("compact-*"))
    assert compacted == []  # its output was deleted


def test_compaction_conflicting_at_commit_time_is_refused_by_pyiceberg(
    lake: IcebergLake,
) -> None:
    """The input check races a writer: the writer lands after the check, before the commit."""
    table = small_files(lake)
    (planned,) = plan_compaction(table, small_file_bytes=1 << 30, target_file_bytes=1 << 30)
    stale, stale_location = table.metadata, table.metadata_location  # the compactor's view
    other = ensure_table(lake, FEED)
    commit_windows(other, windows=[WINDOWS[1]], files=[], properties={})  # empties it
    table.metadata, table.metadata_location = stale, stale_location
    outcome = compact(table, planned)
    # pyiceberg's retry refreshed, found an input deleted and refused: no blind retry.
    assert outcome.status.startswith("skipped: deleted data files were found"), outcome
    assert list(Path(table.location(), "data").rglob("compact-*")) == []
    want = truth(DATA, FEED, [WINDOWS[0], *WINDOWS[2:]])
    assert_same(pyiceberg_items(table), want, "after the refused compaction")


def test_orphans_wait_out_their_grace_period(lake: IcebergLake) -> None:
    table = small_files(lake)
    location = Path(table.location())
    stray = location / "data" / "timestamp_day=2024-07-02" / "uploaded-not-committed.parquet"
    stray.write_bytes(b"not yet committed")
    outside = location / "notes.txt"
    outside.write_bytes(b"not ours")
    old = time.time() - 3 * 86400
    os.utime(outside, (old, old))
    now = datetime.now(UTC)

    young = find_orphans(table, older_than=now - timedelta(days=1))
    assert young == []  # a writer may be about to commit it
    os.utime(stray, (old, old))
    (orphan,) = find_orphans(table, older_than=now - timedelta(days=1))
    assert orphan.path == str(stray) and orphan.size == len(b"not yet committed")
    report = maintain_table(table, MaintainOptions(), now=now)
    assert [o.path for o in report.orphans] == [str(stray)]
    assert not stray.exists() and outside.exists()
    check(table, "after removing the orphan")


def test_ages_are_checked() -> None:
    assert parse_age("7d", flag="--older-than") == timedelta(days=7)
    assert parse_age("90m", flag="--older-than") == timedelta(minutes=90)
    for bad in ("7", "0d", "1w", "-1d", "", "99999999999d"):
        with pytest.raises(ConfigError, match="is not an age"):
            parse_age(bad, flag="--older-than")


def test_maintain_through_the_command_line(lake: IcebergLake) -> None:
    table = small_files(lake)
    before = live(table)
    dry = cli(["maintain", "--out", lake.root, "--dry-run", "--json"], key=None)
    assert dry.returncode == 0, dry.stderr
    view = json.loads(dry.stdout)
    (report,) = view["tables"]
    assert view["dry_run"] and report["table"] == f"threatgrid.{FEED}"
    assert set(report["compactions"][0]["inputs"]) == before
    assert live(table) == before

    real = cli(["maintain", "--out", lake.root, "--feeds", FEED], key=None)
    assert real.returncode == 0, real.stderr
    assert "rewrite 4 small files" in real.stdout and "into 1" in real.stdout
    assert len(live(table)) == 1
    check(table, "after maintain")

    missing = cli(["maintain", "--out", str(Path(lake.root).parent / "none")], key=None)
    assert missing.returncode == 2 and "no Iceberg catalog" in missing.stderr
    bad = cli(["maintain", "--out", lake.root, "--older-than", "soon"], key=None)
    assert bad.returncode == 2 and "--older-than 'soon' is not an age" in bad.stderr
