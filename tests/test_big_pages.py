"""Memory stays bounded whatever the server sends: capped bodies, halved limits, big pages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester.sim.data import DatasetSpec
from harvester.sim.server import Faults

from cli import cli
from harvesting import harvest
from lakecheck import assert_lake_exact

START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)


def test_an_endless_body_stops_at_the_cap_and_fails_naming_the_flag(
    make_sim: Any, tmp_path: Path
) -> None:
    """A 200 that never ends is read to --max-page-bytes, not until memory runs out."""
    server = make_sim(faults=Faults(endless_body_rate=1.0), max_limit=1000)
    argv = ["run", "--after", "2024-01-01", "--before", "2024-01-02", "--feeds", "ips"]
    argv += ["--out", str(tmp_path / "lake"), "--base-url", server.url]
    result = cli([*argv, "--max-page-bytes", "262144", "--limit", "64", "--attempts", "1"])
    assert result.returncode == 1, result.stderr
    failed = [json.loads(x) for x in result.stderr.splitlines() if '"window.failed"' in x]
    assert failed and "--max-page-bytes" in failed[0]["reason"]
    assert server.stats.faults.get("endless_body", 0) >= 7  # 64, 32, ... 1: halved each time


def test_a_page_too_big_for_the_cap_is_asked_again_smaller_and_lands_exact(
    make_sim: Any, tmp_path: Path
) -> None:
    """Padded items make a 1,000-item page about 2 MB: with a 512 KiB cap, smaller pages."""
    spec = DatasetSpec(seed=3, rows_per_day=900, item_padding=2000)
    server = make_sim(dataset=spec, max_limit=1000)
    result = harvest(
        server.url,
        str(tmp_path),
        feeds="urls",
        before="2024-01-02",
        confidence=0,
        severity=0,
        max_page_bytes=512 * 1024,
    )
    assert result.ok
    want = server.dataset.truth("urls", START, END, confidence=0, severity=0)
    assert_lake_exact(str(tmp_path), {"urls": want})


def peak_of_this_process() -> int:
    """Bytes of the process's own peak RSS (VmHWM: unlike ru_maxrss, not the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_a_large_allowed_page_peaks_under_three_bodies_and_250_mb(
    make_sim: Any, tmp_path: Path
) -> None:
    """One page of about 100 MB (300,000 items), allowed by the cap: peak <= 3 x body + 250 MB."""
    spec = DatasetSpec(seed=3, rows_per_day=300_000, feeds=("urls",))
    server = make_sim(dataset=spec, max_limit=1_000_000)
    items = server.dataset.truth("urls", START, END, confidence=0, severity=0)
    body = len(json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode())
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from harvesting import harvest
        from test_big_pages import peak_of_this_process
        result = harvest({server.url!r}, {str(tmp_path)!r}, feeds="urls", before="2024-01-02",
                         confidence=0, severity=0, limit=1_000_000,
                         max_page_bytes=512 * 1024 * 1024)
        print(json.dumps({{"ok": result.ok, "pages": result.feeds["urls"].pages,
                           "peak": peak_of_this_process()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["ok"] and outcome["pages"] == 1  # one page, the whole day
    assert body > 80 * 1024 * 1024  # the page really is large
    assert outcome["peak"] <= 3 * body + 250 * 1024 * 1024, (outcome["peak"], body)
    assert_lake_exact(str(tmp_path), {"urls": items})
