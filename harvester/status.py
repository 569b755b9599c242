"""``harvester status``: what the lake holds, from its manifest head alone.

The head is one small object whatever the lake's history (see
:mod:`harvester.manifest.model`), so ``status`` costs one read on a lake of a week and
on one of ten years. Per feed, every UTC day falls in one of these sets:

* *complete*: the feed's complete windows (of any query) cover the whole day, whatever
  the window size (15m, 1d or Nd);
* *failed*: not complete, and touched by a window whose last harvest failed;
* *partial*: some but not all of the day is covered, and no failure explains it (a
  nightly run with ``--lag`` stops mid-day, an interrupted run leaves holes);
* *missing*: between the first and the last complete day, and none of the above.

:func:`build_status` is a pure function from a head to a JSON-able dict;
:func:`collect_status` reads the head (a lake still at manifest version 1 is read into
one in memory, without writing); :func:`render_status` turns the dict into text. Day
sets are shown as ranges (``2024-01-01..2024-01-31``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from datetime import UTC, date, datetime, timedelta
from typing import Any

from harvester.intervals import Spans
from harvester.manifest import legacy
from harvester.manifest.io import Manifest
from harvester.manifest.model import FeedState, Head
from harvester.planner import format_api_epoch, shard_of
from harvester.schemas import FEEDS
from harvester.storage import ABSENT, Store

DAY = 86_400


async def collect_status(store: Store) -> dict[str, Any]:
    """Read the manifest head and summarise it."""
    manifest = Manifest(store)
    head, expect = await manifest.read_head()
    damaged = head is None and expect is not ABSENT
    if damaged:
        # Rebuilt in memory from the partitions (the next run writes it back).
        parts = [(v.part, v.version) for v in await manifest.all_partitions() if v.version]
        head = Head.rebuilt(parts, window=86_400, table_format="hive")
    elif head is None:
        keys = await legacy.legacy_keys(store)
        if keys:
            head, _ = await legacy.build(store, keys, table_format="hive")
    status = build_status(head, lake=store.url())
    if damaged:
        status["head_damaged"] = True
    return status


def build_status(head: Head | None, *, lake: str = "") -> dict[str, Any]:
    """The status of a lake as JSON-able data, from its manifest head (None: empty lake).

    Feeds appear in :data:`~harvester.schemas.FEEDS` order, and only those the lake
    knows anything about.
    """
    if head is None:
        return {"lake": lake, "runs": 0, "last_run": None, "feeds": {}, "shards": {}}
    runs = sorted(head.runs.values(), key=lambda r: str(r.get("ended_at") or ""))
    names = [f for f in FEEDS if f in head.feeds] + sorted(set(head.feeds) - set(FEEDS))
    return {
        "lake": lake,
        "table_format": head.table_format,
        "window_seconds": head.window,
        "runs": len(runs),
        "last_run": _run_view(runs[-1]) if runs else None,
        "feeds": {
            f: feed_status(head.feeds[f], head.runs, verify=head.verify.get(f)) for f in names
        },
        "shards": shard_status(head),
    }


def feed_status(state: FeedState, runs: Mapping[str, Any], *, verify: Any = None) -> dict[str, Any]:
    """One feed's status (see the module docstring)."""
    covered = state.covered
    complete = complete_days(covered)
    failed_spans = Spans.of((f.start, f.end) for f in state.failed)
    failed = days_touched(failed_spans) - complete
    partial = days_touched(covered) - complete - failed
    missing: set[date] = set()
    if complete:
        first, last = min(complete), max(complete)
        span = {first + timedelta(days=i) for i in range((last - first).days + 1)}
        missing = span - complete - failed - partial
    last_run = runs.get(state.last_run) if state.last_run else None
    return {
        "windows": state.windows,
        "rows": state.rows,
        "first": min(complete).isoformat() if complete else None,
        "last": max(complete).isoformat() if complete else None,
        "until": format_api_epoch(covered.last),
        "complete": date_ranges(complete),
        "complete_days": len(complete),
        "partial": date_ranges(partial),
        "partial_days": len(partial),
        "failed": date_ranges(failed),
        "failed_days": len(failed),
        "missing": date_ranges(missing),
        "missing_days": len(missing),
        "failures": [
            {
                "window": f"[{format_api_epoch(f.start)}, {format_api_epoch(f.end)})",
                "start": format_api_epoch(f.start),
                "end": format_api_epoch(f.end),
                "error": f.error,
                "reason": f.reason,
                "run_id": f.run_id,
            }
            for f in state.failed
        ],
        "last_completed_at": format_api_epoch(state.last_completed_at),
        "last_run": _run_view(last_run) if last_run else None,
        "verify": verify,
    }


def shard_status(head: Head) -> dict[str, dict[str, Any]]:
    """Each shard's share of the lake (windows and rows, by month) and its last run.

    Shards are dealt (feed, month) blocks (:func:`~harvester.planner.shard_of`), so a
    shard's share is computed from the head's month summaries, for the shard count the
    lake's runs used.
    """
    shards: dict[str, dict[str, Any]] = {}
    counts = {int(s.split("/")[1]) for s in head.shards if "/" in s}
    feeds = sorted(head.feeds)
    for count in counts:
        for index in range(count):
            shards[f"{index}/{count}"] = {"windows": 0, "rows": 0, "last_run": None}
        for feed in feeds:
            for month, summary in head.feeds[feed].months.items():
                index = shard_of(feed, month, feeds=feeds, count=count)
                view = shards[f"{index}/{count}"]
                view["windows"] += summary.windows
                view["rows"] += summary.rows
    for shard, run_id in head.shards.items():
        view = shards.setdefault(shard, {"windows": 0, "rows": 0, "last_run": None})
        run = head.runs.get(run_id)
        view["last_run"] = _run_view(run) if run else None
    return dict(sorted(shards.items()))


def complete_days(spans: Spans) -> set[date]:
    """The UTC days that lie wholly inside one interval of ``spans``."""
    days: set[date] = set()
    for start, end in spans:
        day = -(-start // DAY) * DAY
        while day + DAY <= end:
            days.add(datetime.fromtimestamp(day, UTC).date())
            day += DAY
    return days


def days_touched(spans: Spans) -> set[date]:
    """Every UTC day some interval of ``spans`` reaches into."""
    days: set[date] = set()
    for start, end in spans:
        day = start // DAY * DAY
        while day < end:
            days.add(datetime.fromtimestamp(day, UTC).date())
            day += DAY
    return days


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
    if status.get("head_damaged"):
        lines.append(
            "The manifest head is damaged: this view was rebuilt from the month partitions; "
            "the next run writes the head again."
        )
    feeds: Mapping[str, Mapping[str, Any]] = status.get("feeds", {})
    if not feeds:
        lines.append("Nothing harvested yet: the lake has no manifest.")
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
    damaged = [
        [feed, _verify_cell(view["verify"])]
        for feed, view in feeds.items()
        if view.get("verify") is not None
    ]
    if damaged:
        lines += ["", "Last verify:", *_table(["feed", "found"], damaged, indent=2)]
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
        return "no runs recorded"
    outcome = "ok" if last.get("ok") else "interrupted" if last.get("interrupted") else "failures"
    form = status.get("table_format", "hive")
    return (
        f"{form} tables; last run {last.get('run_id') or '?'} ended "
        f"{last.get('ended_at') or '?'} ({outcome}); {runs} recent run(s) kept"
    )


def _run_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run as the head keeps it (see :func:`harvester.report.run_view`)."""
    failures = run.get("failures", 0)
    return {
        "run_id": run.get("run_id", ""),
        "shard": run.get("shard", "0/1"),
        "started_at": run.get("started_at"),
        "ended_at": run.get("ended_at"),
        "ok": bool(run.get("ok")),
        "interrupted": bool(run.get("interrupted")),
        "failures": failures if isinstance(failures, int) else len(failures),
    }


def _verify_cell(found: Mapping[str, Any]) -> str:
    at = datetime.fromtimestamp(int(found.get("at", 0)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if found.get("ok"):
        return f"{at}: ok, {found.get('files', 0):,} files"
    parts = [
        f"{len(found.get(k, []))} {k.replace('_', ' ')}"
        for k in ("missing", "wrong_size", "bad_footer", "wrong_rows", "unrecorded")
        if found.get(k)
    ]
    repaired = "repaired" if found.get("repaired") else "not repaired"
    return f"{at}: {', '.join(parts) or 'damaged manifest'} ({repaired})"


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
