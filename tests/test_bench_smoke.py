"""The benchmark harness runs end to end on tiny data (it measures; this asserts no speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.run import main


@pytest.mark.slow
def test_benchmark_harness_smoke_run_writes_a_report(tmp_path: Path) -> None:
    """`python -m benchmarks.run --smoke` runs every scenario and writes its table."""
    out = tmp_path / "RESULTS.md"
    assert main(["--smoke", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    text = out.read_text()
    for scenario in (
        "a. CPU-bound",
        "b. latency-bound",
        "c. rate-bound",
        "d. one dense day",
        "e. long sparse range",
    ):
        assert scenario in text
    assert "harvester" in text
