"""SIGKILL during ``harvester indicators``: each type's table is its old or its new one."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harvester.intel.state import decode_state
from harvester.sim.data import DatasetSpec

from harvesting import harvest
from intel_check import build, table_rows


def _visible(lake: Path) -> list[Path]:
    return [
        p
        for p in (lake / "indicators").rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.parts[-2:])
    ]


def _stamps(lake: Path) -> dict[str, int]:
    found = {}
    for folder in ("indicators", "_indicators"):
        for path in (lake / folder).rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                found[path.relative_to(lake).as_posix()] = path.stat().st_mtime_ns
    return found


@pytest.mark.slow
def test_sigkill_during_a_build_leaves_each_type_old_or_new(make_sim, tmp_path: Path) -> None:
    server = make_sim(dataset=DatasetSpec(seed=3, rows_per_day=300), max_limit=500)
    lake = tmp_path / "lake"
    assert harvest(server.url, str(lake), after="2024-01-28", before="2024-02-01",
                   confidence=0, severity=0).ok  # fmt: skip
    build(str(lake))
    old = table_rows(str(lake))
    assert harvest(server.url, str(lake), after="2024-02-01", before="2024-02-11",
                   confidence=0, severity=0).ok  # fmt: skip
    reference = tmp_path / "reference"
    shutil.copytree(lake, reference)
    build(str(reference))
    new = table_rows(str(reference))
    assert all(old[kind] != new[kind] for kind in new)  # every type changes

    state = lake / "_indicators" / "state.json"
    rng = random.Random(15)
    kills = 0
    for attempt in range(8):
        before = _stamps(lake)
        process = subprocess.Popen(
            [sys.executable, "-m", "harvester", "indicators", "--out", str(lake)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Wait for progress, not for time: every other attempt is killed once the state
        # holds its pending marks (partials being rewritten), the others once the first
        # table was replaced (tables being rewritten).
        watch = "_indicators/state.json" if attempt % 2 == 0 else "indicators/"
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            now = _stamps(lake)
            if any(now.get(k) != v for k, v in before.items() if k.startswith(watch)):
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        got = table_rows(str(lake))
        for kind in new:
            assert got[kind] in (old[kind], new[kind]), kind
        for path in _visible(lake):
            pq.read_table(path)  # whole, or not visible at all
        if process.returncode == 0:
            break
    assert kills >= 1
    final = subprocess.run(
        [sys.executable, "-m", "harvester", "indicators", "--out", str(lake)],
        capture_output=True, text=True, check=False, env=dict(os.environ),
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert table_rows(str(lake)) == new
    done = decode_state(state.read_bytes())
    assert done is not None and not done.pending  # no day is left marked pending
    assert not list(lake.rglob(".*.tmp"))
