"""Group commits into a real Iceberg table: SQLite catalog, local warehouse, two readers.

Every check compares the table, read by pyiceberg's scan and by DuckDB's
``iceberg_scan``, exactly with the simulator's records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.table import Table

from harvester.errors import CommitConflict
from harvester.iceberg.catalog import IcebergLake, open_catalog
from harvester.iceberg.commit import commit_windows, summary_properties
from harvester.iceberg.ddl import iceberg_duckdb_ddl
from harvester.iceberg.tables import ROW_GROUP_ROWS, ensure_table, iceberg_arrow_schema
from harvester.sim.data import Dataset, DatasetSpec

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

DATA = Dataset(DatasetSpec(seed=5, rows_per_day=150))
FEED = "network_streams"


@pytest.fixture
def lake(tmp_path: Path) -> IcebergLake:
    return open_catalog(str(tmp_path / "lake"), None, create=True)


@pytest.fixture
def table(lake: IcebergLake) -> Table:
    return ensure_table(lake, FEED)


def commit(table: Table, windows: list, items: list, run: str = "run-1"):  # type: ignore[no-untyped-def]
    files = write_group(table, FEED, items)
    props = summary_properties(run_id=run, windows=windows, fingerprint="fp-1")
    return commit_windows(table, windows=windows, files=files, properties=props)


def check(table: Table, want: list, what: str) -> None:  # type: ignore[type-arg]
    assert_same(pyiceberg_items(table), want, f"{what} (pyiceberg)")
    assert_same(duckdb_items(duckdb_connection(), table.location()), want, f"{what} (duckdb)")


def test_group_commit_then_replacing_one_window_changes_exactly_its_records(
    table: Table,
) -> None:
    windows = hours(day("2024-03-01"), 12)  # three days of 6h windows: files span windows
    items = truth(DATA, FEED, windows)
    first = commit(table, windows, items)
    assert first is not None and first.files_added == 3
    check(table, items, "group commit")

    # Window 5 again, with every other record only (the API lost some, say).
    target = windows[5]
    fewer = truth(DATA, FEED, [target])[::2]
    assert fewer and len(fewer) < len(truth(DATA, FEED, [target]))
    second = commit(table, [target], fewer, run="run-2")
    assert second is not None and second.sequence_number == first.sequence_number + 1
    assert second.files_rewritten == 1  # its day file also held three other windows
    want = truth(DATA, FEED, windows[:5]) + fewer + truth(DATA, FEED, windows[6:])
    check(table, want, "after replacing one window")
    # Windows of other days kept their files untouched.
    before = {f.file.file_path for f in table.scan(snapshot_id=first.snapshot_id).plan_files()}
    after = {f.file.file_path for f in table.scan().plan_files()}
    assert len(before & after) == 2


def test_replaying_a_group_replaces_never_duplicates(table: Table) -> None:
    windows = hours(day("2024-03-01"), 4)
    items = truth(DATA, FEED, windows)
    commit(table, windows, items)
    # A crash after the commit but before our manifest: the run does it all again.
    commit(table, windows, items)
    commit(table, windows, items)
    check(table, items, "after two replays")
    assert len(list(table.scan().plan_files())) == 1


def test_summary_records_run_windows_and_fingerprint(table: Table) -> None:
    windows = [*hours(day("2024-03-01"), 2), *hours(day("2024-03-02"), 1)]
    info = commit(table, windows, truth(DATA, FEED, windows), run="run-77")
    assert info is not None
    snapshot = table.snapshot_by_id(info.snapshot_id)
    assert snapshot is not None and snapshot.summary is not None
    summary = snapshot.summary.additional_properties
    assert summary["harvester.run-id"] == "run-77"
    assert summary["harvester.fingerprint"] == "fp-1"
    assert summary["harvester.window-count"] == "3"
    assert summary["harvester.windows"] == (
        "2024-03-01T00:00:00Z/2024-03-01T12:00:00Z,2024-03-02T00:00:00Z/2024-03-02T06:00:00Z"
    )


def test_nothing_to_change_makes_no_snapshot(table: Table) -> None:
    empty = [(day("2024-03-01"), day("2024-03-02"))]
    assert commit(table, empty, []) is None
    table.refresh()
    assert table.metadata.snapshots == []
    windows = hours(day("2024-03-05"), 4)
    info = commit(table, windows, truth(DATA, FEED, windows))
    assert info is not None
    assert commit(table, empty, []) is None  # no record there to remove
    table.refresh()
    assert [s.snapshot_id for s in table.metadata.snapshots] == [info.snapshot_id]


def test_an_empty_replacement_removes_the_window(table: Table) -> None:
    windows = hours(day("2024-03-01"), 4)
    commit(table, windows, truth(DATA, FEED, windows))
    assert commit(table, [windows[0]], []) is not None  # the records are gone now
    check(table, truth(DATA, FEED, windows[1:]), "after emptying a window")


def test_files_that_break_the_contract_are_refused(table: Table) -> None:
    windows = hours(day("2024-03-01"), 2)
    files = write_group(table, FEED, truth(DATA, FEED, hours(day("2024-03-01"), 3)))
    with pytest.raises(ValueError, match="outside the windows"):
        commit_windows(table, windows=windows, files=files, properties={})
    table.refresh()
    assert table.metadata.snapshots == []


def test_a_stale_table_handle_conflicts_and_is_retried(lake: IcebergLake) -> None:
    """Two handles at the same snapshot: the second commit really conflicts, then lands."""
    first, second = ensure_table(lake, FEED), ensure_table(lake, FEED)
    a, b = hours(day("2024-03-01"), 2), hours(day("2024-03-02"), 2)
    landed = commit(first, a, truth(DATA, FEED, a))
    files = write_group(second, FEED, truth(DATA, FEED, b))
    second.metadata = first.metadata.model_copy(update={"snapshots": [], "refs": {}})
    second.metadata_location = "stale"  # as if loaded before the first commit
    info = commit_windows(second, windows=b, files=files, properties={})
    assert info is not None and landed is not None
    snapshot = second.snapshot_by_id(info.snapshot_id)
    assert snapshot is not None and snapshot.parent_snapshot_id == landed.snapshot_id  # rebased
    check(first, truth(DATA, FEED, a + b), "both groups")


def test_conflicts_that_never_end_give_up_with_nothing_committed(
    lake: IcebergLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table import Transaction

    table = ensure_table(lake, FEED)
    windows = hours(day("2024-03-01"), 2)
    files = write_group(table, FEED, truth(DATA, FEED, windows))

    def lose(self: Transaction) -> Table:
        raise CommitFailedException("another writer won")

    monkeypatch.setattr(Transaction, "commit_transaction", lose)
    slept: list[float] = []
    with pytest.raises(CommitConflict, match="conflicted with concurrent writers 3 times"):
        commit_windows(
            table, windows=windows, files=files, properties={}, max_attempts=3, sleep=slept.append
        )
    assert len(slept) == 2
    monkeypatch.undo()
    table.refresh()
    assert table.metadata.snapshots == []
    assert all(Path(f).exists() for f in files)  # the caller's files are left alone


def test_duckdb_view_made_before_a_run_sees_its_rows(lake: IcebergLake, table: Table) -> None:
    first = hours(day("2024-03-01"), 4)
    commit(table, first, truth(DATA, FEED, first))
    con = duckdb_connection()
    con.execute(iceberg_duckdb_ddl(lake.root, feeds=[FEED]))  # the whole script, as printed
    assert_same(duckdb_items(con, FEED, view=True), truth(DATA, FEED, first), "view")
    second = hours(day("2024-03-02"), 4)
    commit(table, second, truth(DATA, FEED, second))
    assert_same(duckdb_items(con, FEED, view=True), truth(DATA, FEED, first + second), "view 2")
    commit(table, [first[1]], [])
    want = truth(DATA, FEED, [first[0], *first[2:], *second])
    assert_same(duckdb_items(con, FEED, view=True), want, "view 3")


def test_data_files_carry_field_ids_and_microseconds(table: Table) -> None:
    windows = hours(day("2024-03-01"), 1)
    (path,) = write_group(table, FEED, truth(DATA, FEED, windows))
    schema = pq.read_schema(path)
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    ids = [int(f.metadata[b"PARQUET:field_id"]) for f in schema]
    assert ids == [f.field_id for f in table.schema().fields]
    assert schema.equals(iceberg_arrow_schema(FEED), check_metadata=True)


MEMORY_SCRIPT = r"""
import json, sys
import pyarrow as pa
from harvester.iceberg.catalog import open_catalog
from harvester.iceberg.commit import commit_windows
from harvester.iceberg.tables import ensure_table
from datetime import datetime, timedelta, UTC
lake = open_catalog(sys.argv[1], None)
table = ensure_table(lake, "ips")
start = datetime(2024, 3, 1, tzinfo=UTC)
window = (start + timedelta(hours=6), start + timedelta(hours=7))
pool = pa.default_memory_pool()
before = pool.max_memory()
info = commit_windows(table, windows=[window], files=[], properties={})
print(json.dumps({"peak": pool.max_memory(), "before": before,
                  "rewritten": info.files_rewritten}))
"""


def _big_day(rows: int) -> pa.Table:
    """``rows`` ips records spread over 2024-03-01, built column-wise (fast)."""
    import pyarrow.compute as pc

    numbers = pa.array(range(rows), pa.int64())
    text = numbers.cast(pa.string())
    seconds = pc.add(pc.divide(pc.multiply(numbers, 86_399), rows), 1_709_251_200)
    return pa.table(
        {
            "timestamp": seconds.cast(pa.timestamp("s", tz="UTC")),
            "ioc": pc.binary_join_element_wise("indicator-", text, ""),
            "confidence": pc.remainder(numbers, 100).cast(pa.int32()),
            "severity": pc.remainder(numbers, 90).cast(pa.int32()),
            "sample_id": pc.utf8_lpad(text, 32, "0"),
            "sample_sha256": pc.utf8_lpad(text, 64, "f"),
            "ip": pc.binary_join_element_wise("10.0.", text, ""),
            "port": pc.remainder(numbers, 65536).cast(pa.int32()),
            "extra": pa.nulls(rows, pa.string()),
        }
    )


def test_replacing_a_window_in_a_big_day_file_streams_it(tmp_path: Path) -> None:
    """Peak Arrow memory while a 1,000,000-row day file loses an hour: a few row groups.

    pyiceberg's own ``delete`` would read the whole file into memory (about 170 MB
    here); the rewrite streams it.
    """
    out = tmp_path / "lake"
    table = ensure_table(open_catalog(str(out), None, create=True), "ips")
    rows = 1_000_000
    big = _big_day(rows)
    in_memory = big.cast(iceberg_arrow_schema("ips")).nbytes
    from harvester.iceberg.tables import DataFileWriter, data_file_path

    path = data_file_path(table.location(), day("2024-03-01").date())
    Path(path).parent.mkdir(parents=True)
    with DataFileWriter(path, "ips") as writer:
        for offset in range(0, rows, 50_000):
            writer.write(big.slice(offset, 50_000))
    del big
    windows = [(day("2024-03-01"), day("2024-03-02"))]
    commit_windows(table, windows=windows, files=[path], properties={})
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rewritten"] == 1
    peak = report["peak"] - report["before"]
    row_group = in_memory * ROW_GROUP_ROWS / rows
    # A row group being read, one buffered for writing, and the write: not the file.
    assert peak < 3.5 * row_group < in_memory / 2, (peak, row_group, in_memory)
    print(
        f"rewrite of a {rows}-row day file: peak Arrow memory {peak / 2**20:.1f} MiB, "
        f"the file in memory {in_memory / 2**20:.1f} MiB"
    )
    table.refresh()
    removed = sum(1 for i in range(rows) if 6 * 3600 <= i * 86_399 // rows < 7 * 3600)
    assert table.scan().count() == rows - removed


def test_a_key_from_the_store_side_is_a_path_the_commit_accepts(
    lake: IcebergLake, table: Table
) -> None:
    """The group committer uploads to ``data_file_key`` through the Store, then commits."""
    from harvester.iceberg.tables import DataFileWriter, data_file_key
    from harvester.schemas import FEEDS, items_to_table

    windows = hours(day("2024-03-03"), 4)
    items = truth(DATA, FEED, windows)
    key = data_file_key(FEED, day("2024-03-03").date())
    assert key != data_file_key(FEED, day("2024-03-03").date())  # never reused
    path = Path(lake.root, key)
    path.parent.mkdir(parents=True)
    with DataFileWriter(path, FEED) as writer:
        writer.write(items_to_table(FEEDS[FEED], items))
    info = commit_windows(table, windows=windows, files=[f"{lake.root}/{key}"], properties={})
    assert info is not None and info.files_added == 1
    check(table, items, "a file committed by its key")
