"""Nightly incremental runs (--since-last, --lag) and the run report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harvester.errors import ConfigError
from harvester.sim.server import Faults, SimulatorThread

from harvesting import forget, harvest
from lakecheck import assert_lake_exact


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_since_last_needs_a_start_the_first_time(sim: SimulatorThread, tmp_path: Path) -> None:
    """With an empty lake, --since-last without --after is a clear error."""
    with pytest.raises(ConfigError, match="pass --after for the first run"):
        harvest(
            sim.url,
            str(tmp_path),
            after=None,
            since_last=True,
            before="now",
            now=at("2024-01-05T10:00:00"),
        )


def test_nightly_runs_continue_and_a_repeat_does_nothing(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Each night continues where the last stopped, leaves the lag alone, and repeats are no-ops."""
    first = harvest(
        sim.url,
        str(tmp_path),
        feeds="ips,urls",
        since_last=True,
        before="now",
        lag="1h",
        now=at("2024-01-03T00:30:00"),
    )
    # now - lag = 2024-01-02T23:30 -> the last whole window ends 2024-01-02
    assert first.ok and first.feeds["ips"].done == 1
    again = harvest(
        sim.url,
        str(tmp_path),
        feeds="ips,urls",
        since_last=True,
        before="now",
        lag="1h",
        now=at("2024-01-03T00:45:00"),
        after=None,
    )
    assert again.ok and all(
        s.windows == 0 and s.counters.requests == 0 for s in again.feeds.values()
    )
    later = harvest(
        sim.url,
        str(tmp_path),
        feeds="ips,urls",
        since_last=True,
        before="now",
        lag="1h",
        now=at("2024-01-05T06:00:00"),
        after=None,
    )
    assert later.ok and later.feeds["urls"].done == 3
    truth = {
        f: sim.dataset.truth(f, at("2024-01-01T00:00:00"), at("2024-01-05T00:00:00"))
        for f in ("ips", "urls")
    }
    assert_lake_exact(str(tmp_path), truth)


def test_since_last_goes_back_for_a_missing_window(sim: SimulatorThread, tmp_path: Path) -> None:
    """A window missing from the manifest is a gap: --since-last starts there, not after it."""
    assert harvest(sim.url, str(tmp_path), feeds="domains").ok
    forget(str(tmp_path), "domains", at("2024-01-02T00:00:00"))
    resumed = harvest(
        sim.url,
        str(tmp_path),
        feeds="domains",
        after=None,
        since_last=True,
        before="now",
        now=at("2024-01-04T12:00:00"),
    )
    assert resumed.ok
    assert (resumed.feeds["domains"].done, resumed.feeds["domains"].skipped) == (1, 1)
    assert_lake_exact(
        str(tmp_path),
        {
            "domains": sim.dataset.truth(
                "domains", at("2024-01-01T00:00:00"), at("2024-01-04T00:00:00")
            )
        },
    )


def test_run_report_has_totals_failures_and_no_secret(make_sim, tmp_path: Path) -> None:
    """Each run writes _runs/<id>.json with per-feed totals and failures, and no API key."""
    broken = make_sim(faults=Faults(fail_always=("urls",)))
    result = harvest(broken.url, str(tmp_path), feeds="urls,ips", attempts=2)
    reports = list((tmp_path / "_runs").glob("*.json"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "sim-test-key" not in text
    report = json.loads(text)
    assert report["run_id"] == result.run_id and report["ok"] is False
    assert report["feeds"]["ips"]["rows"] == result.feeds["ips"].rows > 0
    assert report["feeds"]["urls"]["failed"] == 3
    assert {f["feed"] for f in report["failures"]} == {"urls"}
    assert report["parameters"]["feeds"] == ["urls", "ips"]
