"""Three shards commit to one table at once, on a SQLite catalog where conflicts are real.

The SQL catalog commits with a compare-and-swap on the metadata location, so of several
commits planned on one snapshot only one lands; the others must be rebased and retried
(moto's Glue ignores ``VersionId``, so there a lost commit would pass unnoticed). Each
round, the three processes write their files, meet at a barrier and commit together.
"""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path
from typing import Any

from harvester.iceberg.catalog import open_catalog
from harvester.iceberg.commit import commit_windows, summary_properties
from harvester.iceberg.tables import ensure_table
from harvester.sim.data import Dataset, DatasetSpec

from icebergcheck import assert_same, day, duckdb_connection, duckdb_items, hours, truth

SPEC = DatasetSpec(seed=9, rows_per_day=80)
FEED = "urls"
SHARDS = 3
ROUNDS = 4


def shard_windows(shard: int, round_: int) -> list[tuple[Any, Any]]:
    """Shard ``shard``'s group in ``round_``: its own day, and one 6h window of a shared day."""
    own = day("2024-05-01") + timedelta(days=round_ * SHARDS + shard)
    shared = hours(day("2024-04-01") + timedelta(days=round_), SHARDS)[shard]
    return [(own, own + timedelta(days=1)), shared]


def shard_worker(out: str, shard: int, barrier: Any, results: Any) -> None:
    from icebergcheck import write_group

    dataset = Dataset(SPEC)
    lake = open_catalog(out, None)
    barrier.wait(timeout=60)
    table = ensure_table(lake, FEED)  # all three race to create it
    rebased = 0
    for round_ in range(ROUNDS):
        windows = shard_windows(shard, round_)
        files = write_group(table, FEED, truth(dataset, FEED, windows))
        barrier.wait(timeout=60)
        table.refresh()
        head = table.metadata.current_snapshot_id
        info = commit_windows(
            table,
            windows=windows,
            files=files,
            properties=summary_properties(
                run_id=f"shard-{shard}", windows=windows, fingerprint="f"
            ),
        )
        assert info is not None
        snapshot = table.snapshot_by_id(info.snapshot_id)
        assert snapshot is not None
        # Landed on another shard's commit instead of the head we started from.
        rebased += snapshot.parent_snapshot_id != head or info.attempts > 1
    results.put((shard, rebased))


def test_three_shards_commit_at_once_and_every_window_is_there_once(tmp_path: Path) -> None:
    out = str(tmp_path / "lake")
    open_catalog(out, None, create=True)  # the catalog file; the table is raced for
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(SHARDS)
    results = context.Queue()
    workers = [
        context.Process(target=shard_worker, args=(out, shard, barrier, results))
        for shard in range(SHARDS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * SHARDS
    rebased = dict(results.get(timeout=5) for _ in range(SHARDS))
    assert sum(rebased.values()) > 0, "no commit ever conflicted: the test proved nothing"

    dataset = Dataset(SPEC)
    windows = [w for s in range(SHARDS) for r in range(ROUNDS) for w in shard_windows(s, r)]
    table = ensure_table(open_catalog(out, None), FEED)
    from icebergcheck import pyiceberg_items

    want = truth(dataset, FEED, windows)
    assert_same(pyiceberg_items(table), want, "pyiceberg")
    assert_same(duckdb_items(duckdb_connection(), table.location()), want, "duckdb")
    assert len(table.metadata.snapshots) == SHARDS * ROUNDS
    runs = [s.summary.additional_properties["harvester.run-id"] for s in table.metadata.snapshots]
    assert sorted(runs) == sorted(f"shard-{s}" for s in range(SHARDS) for _ in range(ROUNDS))
    print(f"commits rebased on another shard's: {rebased}")
