"""Instants at the edge of datetime's range: one line, exit 2, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.sim.server import SimulatorThread

from cli import cli


@pytest.mark.parametrize(
    "args",
    [
        # 0001-01-01T00:00+01:00 is in year 0 in UTC: astimezone overflows.
        ["--after", "0001-01-01T00:00:00+01:00", "--before", "2024-01-01"],
        ["--after", "2024-01-01", "--before", "9999-12-31T23:30:00-01:00"],
        # now - lag before year 1, and a lag timedelta cannot hold.
        ["--since-last", "--before", "now", "--lag", "999999999d"],
        ["--since-last", "--before", "now", "--lag", "1000000000d"],
    ],
)
def test_an_instant_out_of_datetimes_range_is_one_line_exit_2(
    sim: SimulatorThread, tmp_path: Path, args: list[str]
) -> None:
    """Refused like ``--after 1969-12-01`` is, not "internal error: OverflowError"."""
    out = tmp_path / "lake"
    result = cli(["run", "--out", str(out), "--base-url", sim.url, *args])
    lines = [x for x in result.stderr.splitlines() if x.startswith("harvester: ")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "internal error" not in lines[0], result.stderr
    assert not out.exists()
