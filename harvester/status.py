"""``harvester status``: what the lake holds, read from its manifest and run reports.

Per feed, every UTC day falls in one of these sets:

* *complete*: the union of the feed's complete windows (manifest entries, whatever
  their query) covers the whole day, whatever the window size (15m, 1d or Nd);
* *failed*: not complete, and touched by a window that a run report lists as failed
  and that the manifest still does not cover;
* *partial*: some but not all of the day is covered, and no failure explains it (a
  nightly run with ``--lag`` stops mid-day, an interrupted run leaves holes);
* *missing*: between the first and the last complete day, and none of the above.

:func:`build_status` is a pure function from manifest entries and reports to a
JSON-able dict; :func:`collect_status` loads them from a store; :func:`render_status`
turns the dict into a text table for people. Day sets are shown as ranges
(``2024-01-01..2024-01-31``). Failures come from every report, the newest per window;
reports carry whole-second times, so two runs ending in the same second have no
defined order between them.
"""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence, Set
from datetime import UTC, date, datetime, timedelta
from typing import Any

from harvester import manifest
from harvester.manifest import Entry
from harvester.report import load_reports
from harvester.schemas import FEEDS
from harvester.storage import Store
from harvester.windows import DAY, Window, format_api, parse_api

_WINDOW_TEXT = re.compile(r"^\[(?P<start>[^,\s]+),\s*(?P<end>[^)\s]+)\)$")


async def collect_status(store: Store) -> dict[str, Any]:
    """Load every feed's manifest and every run report, and summarise them."""
    async with asyncio.TaskGroup() as group:
        loads = {feed: group.create_task(manifest.load(store, feed)) for feed in FEEDS}
        reports = group.create_task(load_reports(store))
    entries = {feed: list(task.result().values()) for feed, task in loads.items()}
    return build_status(entries, reports.result(), lake=store.url())


def build_status(
    entries: Mapping[str, Iterable[Entry]],
    reports: Sequence[Mapping[str, Any]],
    *,
    lake: str = "",
) -> dict[str, Any]:
    """The status of a lake as JSON-able data, from its manifest entries and run reports.

    ``entries`` maps a feed to its manifest entries; ``reports`` are run reports in any
    order. Feeds appear in :data:`~harvester.schemas.FEEDS` order, and only those the
    lake knows anything about (an entry, or a mention in a report).
    """
    ordered = sorted(reports, key=_report_time)
    by_feed = {feed: list(found) for feed, found in entries.items()}
    mentioned = {f for r in ordered for f in (*r.get("feeds", {}), *_failure_feeds(r))}
    known = {f for f, found in by_feed.items() if found} | mentioned
    names = [f for f in FEEDS if f in known] + sorted(known - set(FEEDS))
    return {
        "lake": lake,
        "runs": len(ordered),
        "last_run": _run_view(ordered[-1]) if ordered else None,
        "feeds": {f: feed_status(f, by_feed.get(f, []), ordered) for f in names},
        "shards": shard_status(by_feed, ordered),
    }


def shard_status(
    entries: Mapping[str, Sequence[Entry]], reports: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each shard's share of what the lake holds: windows and rows, and its last run."""
    shards: dict[str, dict[str, Any]] = {}
    for found in entries.values():
        for entry in found:
            view = shards.setdefault(entry.shard, {"windows": 0, "rows": 0, "last_run": None})
            view["windows"] += 1
            view["rows"] += entry.rows
    for report in reports:  # oldest first: the last one seen wins
        shard = report.get("parameters", {}).get("shard", "0/1")
        view = shards.setdefault(shard, {"windows": 0, "rows": 0, "last_run": None})
        view["last_run"] = _run_view(report)
    return dict(sorted(shards.items()))


def feed_status(
    feed: str, entries: Sequence[Entry], reports: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """One feed's status (see the module docstring); ``reports`` oldest first."""
    covered = merge_windows(e.window for e in entries)
    complete = complete_days(covered)
    failures = still_failed(feed, covered, reports)
    failed = {d for f in failures for d in f["window_days"]} - complete
    touched = {d for e in entries for d in e.window.days()}
    partial = touched - complete - failed
    missing: set[date] = set()
    if complete:
        first, last = min(complete), max(complete)
        span = {first + timedelta(days=i) for i in range((last - first).days + 1)}
        missing = span - complete - failed - partial
    runs = [r for r in reports if feed in r.get("feeds", {})]
    return {
        "windows": len(entries),
        "rows": sum(e.rows for e in entries),
        "first": min(complete).isoformat() if complete else None,
        "last": max(complete).isoformat() if complete else None,
        "until": format_api(covered[-1][1]) if covered else None,
        "complete": date_ranges(complete),
        "complete_days": len(complete),
        "partial": date_ranges(partial),
        "partial_days": len(partial),
        "failed": date_ranges(failed),
        "failed_days": len(failed),
        "missing": date_ranges(missing),
        "missing_days": len(missing),
        "failures": [{k: v for k, v in f.items() if k != "window_days"} for f in failures],
        "last_completed_at": max((e.completed_at for e in entries), default="") or None,
        "last_run": _run_view(runs[-1]) if runs else None,
    }


def merge_windows(windows: Iterable[Window]) -> list[tuple[datetime, datetime]]:
    """The union of ``windows`` as sorted, disjoint, non-touching ``[start, end)`` spans."""
    spans: list[tuple[datetime, datetime]] = []
    for window in sorted(windows):
        if spans and window.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], window.end))
        else:
            spans.append((window.start, window.end))
    return spans


def complete_days(spans: Sequence[tuple[datetime, datetime]]) -> set[date]:
    """The UTC days that lie wholly inside one of ``spans`` (as from :func:`merge_windows`)."""
    days: set[date] = set()
    for start, end in spans:
        day = _midnight(start)
        if day < start:
            day += DAY
        while day + DAY <= end:
            days.add(day.date())
            day += DAY
    return days


def is_covered(spans: Sequence[tuple[datetime, datetime]], window: Window) -> bool:
    """True when one of ``spans`` (sorted, disjoint) holds all of ``window``."""
    i = bisect_right(spans, (window.start, datetime.max.replace(tzinfo=UTC))) - 1
    return i >= 0 and spans[i][0] <= window.start and window.end <= spans[i][1]


def still_failed(
    feed: str,
    spans: Sequence[tuple[datetime, datetime]],
    reports: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """``feed``'s failed windows that the manifest still does not cover, oldest first.

    Every report is read, not just the newest: a window that failed a month ago and was
    never harvested again is still a failed gap. A window later completed (even under
    another window size) is not. For each window the newest failure wins.
    """
    latest: dict[Window, dict[str, Any]] = {}
    for run in reports:
        for failure in run.get("failures", []):
            if failure.get("feed") != feed:
                continue
            window = failure_window(failure)
            if window is None:
                continue  # reports are written by us; an odd one is not worth failing on
            latest[window] = {
                "window": str(window),
                "error": failure.get("error", ""),
                "reason": failure.get("reason", ""),
                "run_id": run.get("run_id", ""),
                "window_days": window.days(),
            }
    return [view for window, view in sorted(latest.items()) if not is_covered(spans, window)]


def failure_window(failure: Mapping[str, Any]) -> Window | None:
    """The window of a report's failure: ``start`` and ``end``, or a version 1 label."""
    if "start" in failure:
        try:
            return Window(start=parse_api(failure["start"]), end=parse_api(failure["end"]))
        except (KeyError, TypeError, ValueError):
            return None
    return parse_window(str(failure.get("window", "")))


def parse_window(text: str) -> Window | None:
    """Parse a version 1 report's window label (``[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z)``).

    Reports of version 2 and later store ``start`` and ``end`` instead.
    """
    match = _WINDOW_TEXT.match(text.strip())
    if not match:
        return None
    try:
        start = datetime.fromisoformat(match["start"]).astimezone(UTC)
        end = datetime.fromisoformat(match["end"]).astimezone(UTC)
        return Window(start=start, end=end)
    except ValueError:
        return None


def date_ranges(days: Iterable[date]) -> list[str]:
    """Days as compact, sorted ranges: ``["2024-01-01..2024-01-31", "2024-02-03"]``."""
    ranges: list[str] = []
    ordered = sorted(set(days))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] == timedelta(days=1):
            j += 1
        first, last = ordered[i].isoformat(), ordered[j].isoformat()
        ranges.append(first if i == j else f"{first}..{last}")
        i = j + 1
    return ranges


def render_status(status: Mapping[str, Any]) -> str:
    """The status as text for people: a header, a table per feed, then gaps and failures."""
    lines = [f"Lake {status.get('lake') or '?'}: {_runs_line(status)}"]
    feeds: Mapping[str, Mapping[str, Any]] = status.get("feeds", {})
    if not feeds:
        lines.append("Nothing harvested yet: no manifest entries and no run reports.")
        return "\n".join(lines)
    header = ["feed", "windows", "rows", "days", "from", "to", "failed", "missing", "until"]
    rows = [
        [
            feed,
            f"{view['windows']:,}",
            f"{view['rows']:,}",
            f"{view['complete_days']:,}",
            view["first"] or "-",
            view["last"] or "-",
            f"{view['failed_days']:,}",
            f"{view['missing_days']:,}",
            view["until"] or "-",
        ]
        for feed, view in feeds.items()
    ]
    lines += ["", *_table(header, rows, right={1, 2, 3, 6, 7})]
    gaps = [
        [feed, kind, ", ".join(view[kind])]
        for feed, view in feeds.items()
        for kind in ("failed", "missing", "partial")
        if view[kind]
    ]
    if gaps:
        lines += ["", "Days not complete:", *_table(["feed", "kind", "days"], gaps, indent=2)]
    shards: Mapping[str, Mapping[str, Any]] = status.get("shards", {})
    if len(shards) > 1:
        table = [
            [shard, f"{view['windows']:,}", f"{view['rows']:,}", _last_run_cell(view)]
            for shard, view in shards.items()
        ]
        lines += [
            "",
            "Shards:",
            *_table(["shard", "windows", "rows", "last run"], table, right={1, 2}, indent=2),
        ]
    failures = [
        [feed, f["window"], _one_line(f"{f['error']}: {f['reason']}")]
        for feed, view in feeds.items()
        for f in view["failures"]
    ]
    if failures:
        lines += [
            "",
            "Failed windows (run the same harvest again to finish them):",
            *_table(["feed", "window", "error"], failures, indent=2),
        ]
    return "\n".join(lines)


def _runs_line(status: Mapping[str, Any]) -> str:
    last = status.get("last_run")
    runs = status.get("runs", 0)
    if not last:
        return "no run reports"
    outcome = "ok" if last.get("ok") else "interrupted" if last.get("interrupted") else "failures"
    noun = "run" if runs == 1 else "runs"
    return (
        f"{runs} {noun}; last {last.get('run_id') or '?'} ended "
        f"{last.get('ended_at') or '?'} ({outcome})"
    )


def _run_view(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run.get("run_id", ""),
        "started_at": run.get("started_at"),
        "ended_at": run.get("ended_at"),
        "ok": bool(run.get("ok")),
        "interrupted": bool(run.get("interrupted")),
        "failures": len(run.get("failures", [])),
    }


def _report_time(run: Mapping[str, Any]) -> tuple[str, str, str]:
    return (run.get("ended_at") or "", run.get("started_at") or "", run.get("run_id") or "")


def _failure_feeds(run: Mapping[str, Any]) -> list[str]:
    return [str(f["feed"]) for f in run.get("failures", []) if f.get("feed")]


def _midnight(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    indent: int = 0,
    right: Set[int] = frozenset(),
) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    pad = " " * indent

    def line(cells: Sequence[str]) -> str:
        aligned = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return pad + "  ".join(aligned).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _last_run_cell(view: Mapping[str, Any]) -> str:
    run = view.get("last_run")
    if not run:
        return "-"
    outcome = "ok" if run.get("ok") else "interrupted" if run.get("interrupted") else "failed"
    return f"{run.get('ended_at') or '?'} ({outcome})"
