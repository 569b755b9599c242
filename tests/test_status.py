"""``harvester status``: day sets from windows of any size, failures, gaps, rendering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from harvester.intervals import Spans
from harvester.manifest.model import FailedSpan, Head, Partition, WindowRecord, month_of
from harvester.sim.server import Faults, SimulatorThread
from harvester.status import build_status, collect_status, complete_days, date_ranges, render_status
from harvester.storage import LocalStore

from cli import cli
from harvesting import harvest


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def windows(start: str, end: str, step: timedelta) -> list[tuple[int, int]]:
    first, last, size = at(start), at(end), int(step.total_seconds())
    return [(s, s + size) for s in range(first, last, size)]


def head_of(
    feeds: dict[str, Iterable[tuple[int, int]]],
    *,
    step: int = 86_400,
    rows: int = 10,
    done_at: str = "2024-02-01",
    failures: Iterable[tuple[str, tuple[int, int], str, str]] = (),
    runs: Iterable[dict[str, Any]] = (),
) -> Head:
    """A head as the manifest would hold it after these windows, failures and runs."""
    head = Head(table_format="hive", window=step)
    for feed, spans in feeds.items():
        by_month: dict[str, list[WindowRecord]] = {}
        for start, end in spans:
            record = WindowRecord(
                start=start,
                end=end,
                fingerprint="f",
                rows=rows,
                run_id="run-a",
                completed_at=at(done_at),
            )
            by_month.setdefault(month_of(start), []).append(record)
        for month, records in by_month.items():
            part = Partition(feed=feed, month=month).with_changes(windows=records)
            head = head.with_partition(part, f"v-{month}")
    for feed, (start, end), run_id, reason in failures:
        failed = FailedSpan(start=start, end=end, error="ServerError", reason=reason, run_id=run_id)
        head = head.with_failures(feed, [failed])
    for run in runs:
        head = head.with_run(run, feeds=run.get("feeds", ["ips"]))
    return head


def run(
    run_id: str, ended_at: str, *, ok: bool = True, feeds: list[str] | None = None
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "shard": "0/1",
        "started_at": ended_at,
        "ended_at": ended_at,
        "ok": ok,
        "interrupted": False,
        "failures": 0 if ok else 1,
        "feeds": feeds or ["ips"],
    }


def d(text: str) -> date:
    return date.fromisoformat(text)


def test_date_ranges_are_compact_sorted_and_deduplicated() -> None:
    """Consecutive days collapse to FIRST..LAST, lone days stay single; order and repeats vanish."""
    days = [d("2024-01-03"), d("2024-01-01"), d("2024-01-02"), d("2024-01-02"), d("2024-01-05")]
    assert date_ranges(days) == ["2024-01-01..2024-01-03", "2024-01-05"]
    assert date_ranges([]) == []
    assert date_ranges([d("2023-12-31"), d("2024-01-01")]) == ["2023-12-31..2024-01-01"]


def test_a_day_is_complete_when_the_union_of_windows_covers_it() -> None:
    """15m, 6h, 1d and 2d windows all count; a day three quarters covered is not complete."""
    spans = Spans.of(
        [
            *windows("2024-01-01", "2024-01-02", timedelta(minutes=15)),
            *windows("2024-01-02", "2024-01-02T18:00:00", timedelta(hours=6)),
            *windows("2024-01-04", "2024-01-06", timedelta(days=2)),
            *windows("2024-01-06", "2024-01-07", timedelta(days=1)),
        ]
    )
    assert spans.pairs == (
        (at("2024-01-01"), at("2024-01-02T18:00:00")),
        (at("2024-01-04"), at("2024-01-07")),
    )
    assert date_ranges(complete_days(spans)) == ["2024-01-01", "2024-01-04..2024-01-06"]


def test_windows_across_midnight_complete_only_whole_days() -> None:
    """Two 12h windows offset by 6h cover 2024-01-02 whole but neither neighbour day."""
    spans = Spans.of([(at("2024-01-01T18:00:00"), at("2024-01-03T06:00:00"))])
    assert complete_days(spans) == {d("2024-01-02")}


def test_status_sorts_days_into_complete_failed_partial_and_missing() -> None:
    """Failed = failed and still not covered; partial = some coverage; missing = gaps between."""
    six = timedelta(hours=6)
    done = [
        *windows("2024-01-01", "2024-01-03", six),
        *windows("2024-01-06", "2024-01-08", six),
        *windows("2024-01-10", "2024-01-11T12:00:00", six),
    ]
    fixed_later = (at("2024-01-02"), at("2024-01-03"))
    still_broken = (at("2024-01-04"), at("2024-01-05"))
    head = head_of(
        {"ips": done},
        step=6 * 3600,
        done_at="2024-02-07",
        failures=[
            ("ips", fixed_later, "run-1", "503 from server"),
            ("ips", still_broken, "run-1", "503 from server"),
            ("ips", still_broken, "run-2", "reset by peer"),
        ],
        runs=[
            run("run-1", "2024-02-01T00:00:00Z", ok=False),
            run("run-2", "2024-02-03T00:00:00Z", ok=False),
        ],
    )
    status = build_status(head, lake="/lake")
    ips = status["feeds"]["ips"]
    assert ips["complete"] == ["2024-01-01..2024-01-02", "2024-01-06..2024-01-07", "2024-01-10"]
    assert ips["failed"] == ["2024-01-04"]
    assert ips["missing"] == ["2024-01-03", "2024-01-05", "2024-01-08..2024-01-09"]
    assert ips["partial"] == ["2024-01-11"]
    assert (ips["first"], ips["last"], ips["until"]) == (
        "2024-01-01",
        "2024-01-10",
        "2024-01-11T12:00:00Z",
    )
    assert ips["windows"] == len(done) and ips["rows"] == 10 * len(done)
    assert ips["complete_days"] == 5 and ips["failed_days"] == 1 and ips["missing_days"] == 4
    assert [(f["window"], f["reason"], f["run_id"]) for f in ips["failures"]] == [
        ("[2024-01-04T00:00:00Z, 2024-01-05T00:00:00Z)", "reset by peer", "run-2")
    ]
    assert ips["last_completed_at"] == "2024-02-07T00:00:00Z"
    assert ips["last_run"]["run_id"] == "run-2"
    assert status["runs"] == 2 and status["last_run"]["run_id"] == "run-2"
    assert orjson.loads(orjson.dumps(status)) == status


def test_a_failure_covered_later_by_smaller_windows_is_not_failed() -> None:
    """A failed day later covered (here by four 6h windows) is complete, not failed."""
    day = (at("2024-01-01"), at("2024-01-02"))
    head = head_of({}, step=6 * 3600, failures=[("urls", day, "r", "503")])
    part = Partition(feed="urls", month="2024-01").with_changes(
        windows=[
            WindowRecord(start=s, end=e, fingerprint="f", rows=1, run_id="r2", completed_at=0)
            for s, e in windows("2024-01-01", "2024-01-02", timedelta(hours=6))
        ]
    )
    urls = build_status(head.with_partition(part, "v"))["feeds"]["urls"]
    assert urls["complete"] == ["2024-01-01"] and urls["failed"] == [] and urls["failures"] == []


def test_a_feed_known_only_from_failures_is_listed() -> None:
    """A feed with no complete window but failed windows shows its failed days and no rows."""
    head = head_of(
        {"ips": windows("2024-01-01", "2024-01-02", timedelta(days=1))},
        failures=[("urls", (at("2024-01-01"), at("2024-01-03")), "r", "503")],
    )
    urls = build_status(head)["feeds"]["urls"]
    assert urls["failed"] == ["2024-01-01..2024-01-02"] and urls["complete"] == []
    assert urls["rows"] == 0 and urls["first"] is None and urls["missing"] == []
    assert list(build_status(head)["feeds"]) == ["ips", "urls"]  # FEEDS order


def test_render_status_shows_feeds_gaps_and_failures() -> None:
    """The text view has a row per feed, the not-complete days as ranges and the failure reasons."""
    day = timedelta(days=1)
    head = head_of(
        {
            "ips": windows("2024-01-01", "2024-01-04", day)
            + windows("2024-01-06", "2024-01-07", day)
        },
        rows=1500,
        failures=[("ips", (at("2024-01-04"), at("2024-01-05")), "run-9", "503 from server")],
        runs=[run("run-9", "2024-01-08T00:00:00Z", ok=False)],
    )
    text = render_status(build_status(head, lake="/lake"))
    assert text.startswith("Lake /lake: hive tables; last run run-9 ended 2024-01-08T00:00:00Z")
    assert "6,000" in text  # rows with separators
    assert "2024-01-01" in text and "2024-01-06" in text
    assert "failed   2024-01-04" in text and "missing  2024-01-05" in text
    assert "ServerError: 503 from server" in text


def test_render_status_of_an_empty_lake_says_so() -> None:
    """A lake with no manifest renders one clear sentence, not an empty table."""
    text = render_status(build_status(None, lake="/nowhere"))
    assert "Nothing harvested yet" in text


def test_collect_status_of_a_real_lake_after_failures_gaps_and_repairs(
    make_sim: Any, sim: SimulatorThread, tmp_path: Path
) -> None:
    """Harvests with a failing feed, a gap and a repair give the status the manifest implies."""
    out = str(tmp_path)
    broken = make_sim(faults=Faults(fail_always=("urls",)))
    first = harvest(broken.url, out, feeds="ips,urls", attempts=2)
    assert first.feeds["urls"].failed == 3 and first.feeds["ips"].done == 3
    second = harvest(sim.url, out, feeds="ips,urls", after="2024-01-06", before="2024-01-08")
    third = harvest(sim.url, out, feeds="urls", after="2024-01-02", before="2024-01-03")
    assert second.ok and third.ok

    status = asyncio.run(collect_status(LocalStore(out)))
    ips, urls = status["feeds"]["ips"], status["feeds"]["urls"]
    assert list(status["feeds"]) == ["ips", "urls"] and status["runs"] == 3
    assert ips["complete"] == ["2024-01-01..2024-01-03", "2024-01-06..2024-01-07"]
    assert ips["missing"] == ["2024-01-04..2024-01-05"] and ips["failed"] == []
    assert urls["complete"] == ["2024-01-02", "2024-01-06..2024-01-07"]
    assert urls["failed"] == ["2024-01-01", "2024-01-03"]
    assert urls["missing"] == ["2024-01-04..2024-01-05"]
    assert [f["run_id"] for f in urls["failures"]] == [first.run_id, first.run_id]
    assert ips["rows"] == first.feeds["ips"].rows + second.feeds["ips"].rows
    assert urls["rows"] == second.feeds["urls"].rows + third.feeds["urls"].rows
    assert ips["last_run"]["run_id"] == second.run_id and urls["last_run"]["run_id"] == third.run_id
    assert status["last_run"]["run_id"] == third.run_id and status["lake"] == str(tmp_path)


def test_status_command_prints_json_and_text(sim: SimulatorThread, tmp_path: Path) -> None:
    """`harvester status --json` prints the status dict; without --json, the text table."""
    result = harvest(sim.url, str(tmp_path), feeds="domains")
    as_json = cli(["status", "--out", str(tmp_path), "--json"])
    assert as_json.returncode == 0, as_json.stderr
    domains = json.loads(as_json.stdout)["feeds"]["domains"]
    assert domains["complete"] == ["2024-01-01..2024-01-03"]
    assert domains["rows"] == result.feeds["domains"].rows
    as_text = cli(["status", "--out", str(tmp_path)])
    assert as_text.returncode == 0, as_text.stderr
    assert "domains" in as_text.stdout and "2024-01-01" in as_text.stdout


def test_status_shows_each_shards_share(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a sharded job, status counts each shard's windows and rows and its last run."""
    import asyncio

    from harvester.status import collect_status, render_status
    from harvester.storage import LocalStore

    from harvesting import harvest

    out = str(tmp_path / "lake")
    results = [harvest(sim.url, out, feeds="ips,urls", shard=f"{i}/2") for i in range(2)]
    assert all(r.ok for r in results)
    status = asyncio.run(collect_status(LocalStore(out)))
    shards = status["shards"]
    assert set(shards) == {"0/2", "1/2"}
    assert sum(v["windows"] for v in shards.values()) == 6
    assert sum(v["rows"] for v in shards.values()) == sum(
        s.rows for r in results for s in r.feeds.values()
    )
    assert all(v["last_run"]["ok"] for v in shards.values())
    assert "Shards:" in render_status(status)
