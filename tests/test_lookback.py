"""--lookback: late records are found, counted and archived; nothing new rewrites nothing."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from harvester.sim.server import SimulatorThread

from cli import cli
from harvesting import harvest
from lakecheck import assert_lake_exact

FEEDS = ["ips", "domains"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def nightly(server: SimulatorThread, out: Path, now: str, **options: Any) -> Any:
    return harvest(
        server.url,
        str(out),
        feeds=",".join(FEEDS),
        after="2024-01-01",
        since_last=True,
        before="now",
        lag="1h",
        now=at(now),
        confidence=0,
        severity=0,
        **options,
    )


def files(out: Path) -> dict[str, bytes]:
    """Every data and manifest partition file's bytes (not the head, nor run reports)."""
    found = {}
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        data = rel.endswith(".parquet") or "_manifest/" in rel
        if path.is_file() and data and not rel.endswith("_head.json"):
            found[rel] = path.read_bytes()
    return found


def test_late_records_are_picked_up_counted_and_a_quiet_night_rewrites_nothing(
    make_sim: Any, tmp_path: Path
) -> None:
    """Records added to a harvested day come in with --lookback 3d; the next night is quiet."""
    server = make_sim()
    first = nightly(server, tmp_path, "2024-01-06T02:00:00")
    assert first.ok and first.feeds["ips"].done == 5
    late = server.add_records("ips", date(2024, 1, 4), 7)
    late += server.add_records("ips", date(2024, 1, 1), 3)  # too old for the lookback
    second = nightly(server, tmp_path, "2024-01-06T03:00:00", lookback="3d")
    assert second.ok
    assert second.feeds["ips"].late == 7  # only the day inside the lookback
    assert second.feeds["domains"].late == 0
    assert second.feeds["domains"].unchanged == 3  # harvested again, found the same rows
    want = {
        f: server.dataset.truth(f, at("2024-01-01"), at("2024-01-06"), confidence=0, severity=0)
        for f in FEEDS
    }
    old_day = [i for i in want["ips"] if not i["timestamp"].startswith("2024-01-01")]
    old_day += [i for i in want["ips"] if i["timestamp"].startswith("2024-01-01") and i not in late]
    assert_lake_exact(str(tmp_path), {"ips": old_day, "domains": want["domains"]})

    before = files(tmp_path)
    third = nightly(server, tmp_path, "2024-01-06T04:00:00", lookback="3d")
    assert third.ok and third.feeds["ips"].late == 0
    assert sum(s.counters.requests for s in third.feeds.values()) > 0  # it did look
    assert files(tmp_path) == before  # but wrote no file and no partition

    report = json.loads((tmp_path / "_runs" / f"{second.run_id}.json").read_text())
    assert report["parameters"]["lookback"] == "3d"
    assert report["feeds"]["ips"]["late"] == 7


def test_plan_shows_the_windows_a_lookback_harvests_again(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """`plan --lookback` counts the complete windows it will look at again."""
    assert harvest(sim.url, str(tmp_path), feeds="ips", before="2024-01-05").ok
    args = ["plan", "--out", str(tmp_path), "--feeds", "ips", "--after", "2024-01-01"]
    args += ["--before", "2024-01-05", "--lookback", "2d", "--json", "--base-url", sim.url]
    result = cli(args)
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["feeds"]["ips"]["lookback"] == 2
    assert view["feeds"]["ips"]["todo"] == 2 and view["feeds"]["ips"]["done"] == 2
