"""A run's outcome: the result types, the end-of-run summary, and the run report.

:class:`RunResult` is what a harvest returns (to the CLI, to the Python API, to an
orchestrator): per-feed :class:`FeedSummary` totals and every :class:`Failure`. The
summary the CLI logs and the JSON report stored under ``{out}/_runs/`` are both built
from it, so the two never disagree. A report holds the run's parameters (never the
key), per-feed totals and every failure with its window as start and end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from harvester.counters import Counters
from harvester.storage import Store
from harvester.windows import Window, format_api

if TYPE_CHECKING:
    from harvester.config import HarvestConfig

PREFIX = "_runs"
VERSION = 2

log = structlog.get_logger("harvester")


@dataclass(kw_only=True)
class FeedSummary:
    """Per-feed totals of one run, live while it runs."""

    windows: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    pages: int = 0
    rows: int = 0
    held: int = 0
    """Windows left to another run that held their lease."""
    late: int = 0
    """Rows that windows harvested again gained (records that arrived late)."""
    unchanged: int = 0
    """Windows harvested again that brought exactly what the lake held."""
    seconds: float = 0.0
    counters: Counters = field(default_factory=Counters)
    """The API client counts into this very object."""

    def copy(self) -> FeedSummary:
        """A snapshot that later counting does not change."""
        return FeedSummary(**{**vars(self), "counters": Counters(**vars(self.counters))})


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A window that did not complete, and why."""

    feed: str
    start: str
    """The window's start, ``YYYY-MM-DDTHH:MM:SSZ``."""
    end: str
    error: str
    """The error's class name, e.g. ``ServerError``."""
    reason: str

    @classmethod
    def of(cls, feed: str, window: Window, error: BaseException, reason: str) -> Failure:
        """The failure of ``window`` with ``error``."""
        return cls(
            feed=feed,
            start=format_api(window.start),
            end=format_api(window.end),
            error=type(error).__name__,
            reason=reason,
        )

    @property
    def window(self) -> str:
        """The window as logs show it: ``[START, END)``."""
        return f"[{self.start}, {self.end})"


@dataclass(kw_only=True)
class RunResult:
    """The outcome of a run."""

    run_id: str
    feeds: dict[str, FeedSummary]
    failures: list[Failure] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    held_by: list[str] = field(default_factory=list)
    """The runs holding the leases of the windows left to them (``run ID (pid P on HOST)``)."""

    @property
    def held(self) -> int:
        """Windows left to another run that held their lease (and has not finished them)."""
        return sum(s.held for s in self.feeds.values())

    @property
    def ok(self) -> bool:
        """True when every window of the plan is complete."""
        return not self.failures and not self.interrupted and not self.held

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-able data (for XCom, asset metadata, ``--json``)."""
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "held": self.held,
            "held_by": self.held_by,
            "seconds": round(self.seconds, 3),
            "feeds": {feed: asdict(s) for feed, s in self.feeds.items()},
            "failures": [asdict(f) for f in self.failures],
        }


def summarise(result: RunResult) -> None:
    """Log one ``feed.summary`` event per feed, then ``run.done``."""
    for feed, s in result.feeds.items():
        log.info(
            "feed.summary",
            feed=feed,
            windows=s.windows,
            done=s.done,
            skipped=s.skipped,
            failed=s.failed,
            pages=s.pages,
            rows=s.rows,
            requests=s.counters.requests,
            retries=s.counters.retries,
            throttled=s.counters.throttled,
            seconds=round(s.seconds, 2),
        )
    log.info(
        "run.done",
        run_id=result.run_id,
        ok=result.ok,
        failed=len(result.failures),
        interrupted=result.interrupted,
        seconds=round(result.seconds, 2),
    )


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
        "version": VERSION,
        "started_at": started_at,
        "ended_at": ended_at,
        "parameters": config.describe(),
        **result.to_json(),
    }


def run_view(report: dict[str, Any]) -> dict[str, Any]:
    """What the manifest head keeps of a run report: who, when, and how it went."""
    return {
        "run_id": report["run_id"],
        "shard": report["parameters"]["shard"],
        "started_at": report["started_at"],
        "ended_at": report["ended_at"],
        "ok": report["ok"],
        "interrupted": report["interrupted"],
        "failures": len(report["failures"]),
    }


async def write_report(store: Store, report: dict[str, Any]) -> str:
    """Store a report; return its key."""
    key = report_key(report["run_id"], report["parameters"]["shard"])
    await store.put_bytes(key, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return key
