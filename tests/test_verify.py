"""A damaged lake is noticed and repaired; a damaged manifest never stops the lake."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from harvester.leases import Leases
from harvester.manifest.io import Manifest
from harvester.sim.server import SimulatorThread
from harvester.storage import open_store
from harvester.verify import FeedCheck, _repair

from cli import cli
from harvesting import harvest
from lakecheck import assert_lake_exact

FEEDS = ["ips", "domains"]
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)


def truth(server: SimulatorThread) -> dict[str, list[Any]]:
    return {f: server.dataset.truth(f, START, END) for f in FEEDS}


def lake(server: SimulatorThread, out: Path) -> None:
    assert harvest(server.url, str(out), feeds=",".join(FEEDS)).ok


def verify(out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = cli(["verify", "--out", str(out), "--json", *extra])
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def test_a_healthy_lake_verifies_ok_and_status_shows_it(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Nothing missing: exit 0; status shows the check without listing the lake."""
    lake(sim, tmp_path)
    code, found = verify(tmp_path, "--deep")
    assert code == 0 and found["ok"] and found["feeds"]["ips"]["files"] == 3
    status = json.loads(cli(["status", "--out", str(tmp_path), "--json"]).stdout)
    assert status["feeds"]["ips"]["verify"]["ok"] is True


def test_a_deleted_or_truncated_file_is_found_repaired_and_refilled(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Deleted and truncated day files: verify says so, --repair makes them gaps, run refills."""
    lake(sim, tmp_path)
    deleted = next((tmp_path / "ips").glob("dt=2024-01-02/*.parquet"))
    deleted.unlink()
    truncated = next((tmp_path / "domains").glob("dt=2024-01-03/*.parquet"))
    truncated.write_bytes(truncated.read_bytes()[:100])
    stray = tmp_path / "domains" / "dt=2024-01-01" / "part-stray.parquet"
    pq.write_table(pq.read_table(next(stray.parent.glob("part-*.parquet"))), stray)

    code, found = verify(tmp_path)
    assert code == 1
    assert found["feeds"]["ips"]["missing"] == [deleted.relative_to(tmp_path).as_posix()]
    assert found["feeds"]["domains"]["wrong_size"] == [truncated.relative_to(tmp_path).as_posix()]
    assert found["feeds"]["domains"]["unrecorded"] == [stray.relative_to(tmp_path).as_posix()]
    status = cli(["status", "--out", str(tmp_path)])
    assert "Last verify:" in status.stdout and "1 missing" in status.stdout

    code, found = verify(tmp_path, "--repair")
    assert code == 1 and found["feeds"]["ips"]["repaired"] is True
    assert not stray.exists()
    # the damaged windows are gaps now: a plain run of the same range refills exactly them
    again = harvest(sim.url, str(tmp_path), feeds=",".join(FEEDS))
    assert again.ok
    assert again.feeds["ips"].done == 1 and again.feeds["domains"].done == 1
    assert_lake_exact(str(tmp_path), truth(sim))
    assert verify(tmp_path, "--deep")[0] == 0


def test_run_repair_verifies_first_and_refills_in_the_same_run(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """`run --repair`: a deleted file is noticed and harvested again by that run."""
    lake(sim, tmp_path)
    next((tmp_path / "domains").glob("dt=2024-01-02/*.parquet")).unlink()
    plain = harvest(sim.url, str(tmp_path), feeds=",".join(FEEDS))
    assert plain.ok and sum(s.done for s in plain.feeds.values()) == 0  # trusts the manifest
    repaired = harvest(sim.url, str(tmp_path), feeds=",".join(FEEDS), repair=True)
    assert repaired.ok and repaired.feeds["domains"].done == 1
    assert_lake_exact(str(tmp_path), truth(sim))


def test_damaged_manifest_objects_never_stop_run_or_status(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """A garbled partition and a garbled head: status works, run repairs, the lake is exact."""
    lake(sim, tmp_path)
    (tmp_path / "_manifest" / "ips" / "2024-01.json").write_text("{not json")
    code, found = verify(tmp_path)
    assert code == 1 and found["feeds"]["ips"]["damaged_partitions"]
    (tmp_path / "_manifest" / "_head.json").write_text("also not json")
    status = cli(["status", "--out", str(tmp_path), "--json"])
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["head_damaged"] and shown["feeds"]["domains"]["complete_days"] == 3
    text = cli(["status", "--out", str(tmp_path)])
    assert text.returncode == 0 and "manifest head is damaged" in text.stdout
    again = harvest(sim.url, str(tmp_path), feeds=",".join(FEEDS))
    assert again.ok and again.feeds["ips"].done == 3  # ips's month was unreadable: redone
    assert_lake_exact(str(tmp_path), truth(sim))
    assert verify(tmp_path)[0] == 0
    healed = json.loads((tmp_path / "_manifest" / "_head.json").read_text())
    assert healed["feeds"]["ips"]["complete"]


def test_status_of_a_damaged_head_shows_the_lakes_own_window(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """A head rebuilt for status takes the window size the partitions record, not 1d."""
    assert harvest(sim.url, str(tmp_path), feeds="ips", window="6h").ok
    (tmp_path / "_manifest" / "_head.json").write_text("not json")
    status = cli(["status", "--out", str(tmp_path), "--json"])
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["head_damaged"] and shown["window_seconds"] == 6 * 3600


def test_repair_acts_only_on_what_is_still_as_found(sim: SimulatorThread, tmp_path: Path) -> None:
    """Findings a run made stale before the lease was ours (recorded, rewritten) are left be."""
    lake(sim, tmp_path)

    async def repair_stale_findings() -> bool:
        store = open_store(str(tmp_path))
        try:
            manifest = Manifest(store)
            listed = {i.key: i for i in await store.list("ips/")}
            parts = await manifest.read_partitions("ips", ["2024-01"])
            keys = sorted(parts["2024-01"].part.files)
            # As if, at check time, the first file had been unrecorded and the second
            # damaged, and a run had since recorded the first and rewritten the second.
            check = FeedCheck(unrecorded=[keys[0]], wrong_size=[keys[1]])
            check.versions = {keys[0]: listed[keys[0]].version}
            seen = parts["2024-01"]
            record = seen.part.files[keys[1]]
            older = replace(seen, part=seen.part.with_changes(files=[replace(record, size=1)]))
            leases = Leases(store, "verify-test")
            try:
                return await _repair(
                    store, manifest, "ips", {"2024-01": older}, check, leases, 86_400
                )
            finally:
                await leases.release_all()
        finally:
            await store.close()

    assert asyncio.run(repair_stale_findings())
    assert verify(tmp_path)[0] == 0
    assert_lake_exact(str(tmp_path), truth(sim))
    again = harvest(sim.url, str(tmp_path), feeds=",".join(FEEDS))
    assert again.ok and again.feeds["ips"].done == 0  # no window was dropped
