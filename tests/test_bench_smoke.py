"""The benchmark harness runs end to end on tiny data (it measures; this asserts no speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_harness_smoke_run_writes_a_report(tmp_path: Path) -> None:
    """`make bench`'s command writes every scenario's table and keeps the improvement log."""
    out, work = tmp_path / "RESULTS.md", str(tmp_path / "work")
    out.write_text("# old report\n\n## Improvement log\n\n- kept entry 42\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out), "--workdir", work],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for scenario in (
        "a. CPU-bound",
        "b. latency-bound",
        "c. rate-bound",
        "d. one dense day",
        "e. sparse year",
        "e2. sparse year, filtered",
        "f. no-op nightly",
        "g. --window 15m over dense days",
    ):
        assert scenario in text
    assert "harvester" in text
    # the Iceberg path ran in e and its tables read back exactly (a difference exits 1)
    assert "| harvester-iceberg (" in text
    assert "Iceberg path: the rows read back" in text
    assert "# old report" not in text
    assert text.count("## Improvement log") == 1 and "- kept entry 42" in text
