"""The run report: one JSON object per run under ``{out}/_runs/``.

It holds the run's parameters (never the key), per-feed totals (windows, pages, rows,
requests, retries, 429s, bytes, seconds) and every failure with its reason. The
summary the CLI prints comes from the same :class:`~harvester.orchestrator.RunResult`,
so the two never disagree. ``harvester status`` reads the latest reports for failures.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from harvester.storage import Store

if TYPE_CHECKING:
    from harvester.config import HarvestConfig
    from harvester.orchestrator import RunResult

PREFIX = "_runs"


def report_key(run_id: str, shard: str) -> str:
    """Where a run's report lives; shards of one job never share a name."""
    index, _, count = shard.partition("/")
    suffix = f"-shard-{index}-of-{count}" if count not in ("", "1") else ""
    return f"{PREFIX}/{run_id}{suffix}.json"


def build_report(
    config: HarvestConfig, result: RunResult, *, started_at: str, ended_at: str
) -> dict[str, Any]:
    """The report as JSON-able data."""
    return {
        "version": 1,
        "run_id": result.run_id,
        "started_at": started_at,
        "ended_at": ended_at,
        "ok": result.ok,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
        "parameters": config.describe(),
        "feeds": {feed: asdict(s) for feed, s in result.feeds.items()},
        "failures": [asdict(f) for f in result.failures],
    }


async def write_report(store: Store, report: dict[str, Any]) -> str:
    """Store a report; return its key."""
    key = report_key(report["run_id"], report["parameters"]["shard"])
    await store.put_bytes(key, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return key


async def load_reports(store: Store) -> list[dict[str, Any]]:
    """Every run report in the lake, oldest first."""
    reports = []
    for key in await store.list_keys(f"{PREFIX}/"):
        data = await store.get_bytes(key)
        if data:
            try:
                reports.append(orjson.loads(data))
            except orjson.JSONDecodeError:
                continue  # a report is informational; a damaged one must not block status
    return sorted(reports, key=lambda r: (r.get("started_at", ""), r.get("run_id", "")))
