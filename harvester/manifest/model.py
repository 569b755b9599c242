"""The manifest's data (version 2): a head that summarises the lake, and partitions.

A **partition** holds what one (feed, month) has: every complete window (its query
fingerprint, rows, run and where its rows live) and every data file (its size, version
and the windows it holds). A window belongs to the month its start lies in; the month's
*domain* is the stretch of the window grid those windows tile.

The **head** is small whatever the history: per feed, the complete windows as intervals
per query fingerprint (their number grows with the gaps, not the windows), the failed
windows as intervals, and one summary line per month (rows, windows, and the version of
the partition it was computed from, so a head left behind by a crash is noticed and
healed from that partition). The lake's window size and table format live there too.

Everything here is pure: data in, data out. :mod:`harvester.manifest.io` reads and
writes it with conditional writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from harvester.intervals import Spans

VERSION = 2
KIND = "threatgrid-harvester-manifest"


# --- months ------------------------------------------------------------------------


def month_of(epoch: int) -> str:
    """The ``YYYY-MM`` (UTC) of an instant in epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m")


def month_bounds(month: str) -> tuple[int, int]:
    """The first second of ``month`` and of the month after, in epoch seconds."""
    year, number = int(month[:4]), int(month[5:7])
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def months_between(start: int, end: int) -> list[str]:
    """The months whose windows may start in ``[start, end)``, oldest first."""
    months: list[str] = []
    cursor = start
    while cursor < end:
        month = month_of(cursor)
        months.append(month)
        cursor = month_bounds(month)[1]
    return months


def ceil_grid(epoch: int, step: int) -> int:
    """The first point of the window grid (anchored at the epoch) at or after ``epoch``."""
    return -(-epoch // step) * step


def month_domain(month: str, step: int) -> tuple[int, int]:
    """The grid stretch tiled by the windows that start in ``month`` (``step`` seconds)."""
    start, end = month_bounds(month)
    return ceil_grid(start, step), ceil_grid(end, step)


# --- a partition -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WindowRecord:
    """A complete window: the query it was harvested with, its rows and where they are."""

    start: int
    end: int
    fingerprint: str
    rows: int
    run_id: str
    completed_at: int
    files: tuple[str, ...] = ()
    """Hive layout: the data files holding its rows (none when it has none)."""
    snapshot: int | None = None
    """Iceberg: the snapshot that committed it."""
    sequence: int | None = None
    """Iceberg: that snapshot's sequence number."""

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"empty window {self.start}..{self.end}")


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """A data file of the Hive layout: one UTC day of one feed, some of its windows."""

    key: str
    day: str
    size: int
    version: str
    rows: int
    windows: Spans
    """The windows whose rows it holds (as intervals)."""


@dataclass(frozen=True, kw_only=True)
class Partition:
    """What one (feed, month) holds."""

    feed: str
    month: str
    windows: Mapping[int, WindowRecord] = field(default_factory=dict)
    files: Mapping[str, FileRecord] = field(default_factory=dict)
    token: int = 0
    """The highest lease token that wrote this partition (fencing)."""

    @property
    def rows(self) -> int:
        """Rows of the complete windows."""
        return sum(w.rows for w in self.windows.values())

    def complete(self, fingerprint: str | None = None) -> Spans:
        """The complete windows (of ``fingerprint``, or of any query) as intervals."""
        return Spans.of(
            (w.start, w.end)
            for w in self.windows.values()
            if fingerprint is None or w.fingerprint == fingerprint
        )

    def day_files(self, day: str) -> list[FileRecord]:
        """The data files of ``day`` (``YYYY-MM-DD``), in key order."""
        return sorted((f for f in self.files.values() if f.day == day), key=lambda f: f.key)

    def with_changes(
        self,
        *,
        windows: Iterable[WindowRecord] = (),
        drop_windows: Iterable[int] = (),
        files: Iterable[FileRecord] = (),
        drop_files: Iterable[str] = (),
        token: int | None = None,
    ) -> Partition:
        """The partition with windows and files set (by start, by key) or dropped.

        Setting is idempotent: applying the same change twice gives the same partition,
        which is what makes a retried conditional write safe.
        """
        new_windows = dict(self.windows)
        for start in drop_windows:
            new_windows.pop(start, None)
        new_windows.update((w.start, w) for w in windows)
        new_files = dict(self.files)
        for key in drop_files:
            new_files.pop(key, None)
        new_files.update((f.key, f) for f in files)
        return replace(
            self,
            windows=dict(sorted(new_windows.items())),
            files=dict(sorted(new_files.items())),
            token=max(self.token, token or 0),
        )

    def to_json(self) -> dict[str, Any]:
        """A compact JSON form: fingerprints, runs and files are listed once."""
        fps = sorted({w.fingerprint for w in self.windows.values()})
        runs = sorted({w.run_id for w in self.windows.values()})
        keys = list(self.files)
        index = {key: i for i, key in enumerate(keys)}
        windows = []
        for w in self.windows.values():
            where: Any
            if w.snapshot is not None:
                where = {"snapshot": w.snapshot, "sequence": w.sequence}
            else:
                where = [index[f] for f in w.files if f in index]
            windows.append(
                [
                    w.start,
                    w.end,
                    fps.index(w.fingerprint),
                    w.rows,
                    runs.index(w.run_id),
                    w.completed_at,
                    where,
                ]
            )
        return {
            "kind": KIND,
            "version": VERSION,
            "feed": self.feed,
            "month": self.month,
            "token": self.token,
            "fingerprints": fps,
            "runs": runs,
            "files": [
                {
                    "key": f.key,
                    "day": f.day,
                    "size": f.size,
                    "version": f.version,
                    "rows": f.rows,
                    "windows": f.windows.to_json(),
                }
                for f in self.files.values()
            ],
            "windows": windows,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Partition:
        """Inverse of :meth:`to_json`; raises KeyError/TypeError/ValueError if malformed."""
        if body.get("kind") != KIND or body.get("version") != VERSION:
            raise ValueError("not a version 2 manifest partition")
        fps, runs = list(body["fingerprints"]), list(body["runs"])
        files = [
            FileRecord(
                key=str(f["key"]),
                day=str(f["day"]),
                size=int(f["size"]),
                version=str(f["version"]),
                rows=int(f["rows"]),
                windows=Spans.of(f["windows"]),
            )
            for f in body["files"]
        ]
        keys = [f.key for f in files]
        windows = []
        for start, end, fp, rows, run, at, where in body["windows"]:
            snapshot = sequence = None
            held: tuple[str, ...] = ()
            if isinstance(where, dict):
                snapshot, sequence = int(where["snapshot"]), where.get("sequence")
            else:
                held = tuple(keys[i] for i in where)
            windows.append(
                WindowRecord(
                    start=int(start),
                    end=int(end),
                    fingerprint=fps[fp],
                    rows=int(rows),
                    run_id=runs[run],
                    completed_at=int(at),
                    files=held,
                    snapshot=snapshot,
                    sequence=None if sequence is None else int(sequence),
                )
            )
        return cls(
            feed=str(body["feed"]),
            month=str(body["month"]),
            windows={w.start: w for w in sorted(windows, key=lambda w: w.start)},
            files={f.key: f for f in files},
            token=int(body.get("token", 0)),
        )


# --- the head ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MonthSummary:
    """One month of one feed as the head knows it."""

    rows: int
    windows: int
    version: str
    """The version of the partition this summary was computed from."""
    seq: int
    """The head's sequence number when this month last changed."""


@dataclass(frozen=True, kw_only=True)
class FailedSpan:
    """Windows that failed, and why; the newest failure of a window wins."""

    start: int
    end: int
    error: str
    reason: str
    run_id: str


def _cut(failures: Iterable[FailedSpan], spans: Spans) -> list[FailedSpan]:
    out = []
    for failure in failures:
        for start, end in Spans.one(failure.start, failure.end) - spans:
            out.append(replace(failure, start=start, end=end))
    return out


def _merge_failures(failures: Iterable[FailedSpan]) -> tuple[FailedSpan, ...]:
    merged: list[FailedSpan] = []
    for failure in sorted(failures, key=lambda f: f.start):
        last = merged[-1] if merged else None
        same = last is not None and (last.error, last.reason, last.run_id) == (
            failure.error,
            failure.reason,
            failure.run_id,
        )
        if last is not None and same and last.end == failure.start:
            merged[-1] = replace(last, end=failure.end)
        else:
            merged.append(failure)
    return tuple(merged)


@dataclass(frozen=True, kw_only=True)
class FeedState:
    """One feed as the head knows it."""

    complete: Mapping[str, Spans] = field(default_factory=dict)
    """Complete windows, per query fingerprint."""
    queries: Mapping[str, Any] = field(default_factory=dict)
    """The query each fingerprint stands for (for people reading the manifest)."""
    failed: tuple[FailedSpan, ...] = ()
    months: Mapping[str, MonthSummary] = field(default_factory=dict)
    last_completed_at: int | None = None
    last_run: str | None = None

    @property
    def covered(self) -> Spans:
        """Complete windows of any query."""
        union = Spans()
        for spans in self.complete.values():
            union = union | spans
        return union

    @property
    def rows(self) -> int:
        """Rows of every complete window."""
        return sum(m.rows for m in self.months.values())

    @property
    def windows(self) -> int:
        """The number of complete windows."""
        return sum(m.windows for m in self.months.values())


@dataclass(frozen=True, kw_only=True)
class Head:
    """The lake at a glance: what :func:`status` and a nightly run's plan read first."""

    table_format: str
    window: int
    """The lake's window size in seconds: every run must use it."""
    seq: int = 0
    feeds: Mapping[str, FeedState] = field(default_factory=dict)
    runs: Mapping[str, Any] = field(default_factory=dict)
    """Recent runs by id (a bounded number), each as the run report summarises it."""
    shards: Mapping[str, str] = field(default_factory=dict)
    """The last run of each shard (``I/N`` -> run id)."""
    verify: Mapping[str, Any] = field(default_factory=dict)
    """What the last ``harvester verify`` found, per feed."""
    legacy: str = "none"
    """``none``, or ``cleanup`` while version 1 manifest objects are still to delete."""

    @classmethod
    def rebuilt(
        cls, parts: Iterable[tuple[Partition, str]], *, window: int, table_format: str
    ) -> Head:
        """A head from every partition, at its version (the old head was damaged).

        The window size and format the partitions record win over the given ones: a
        run must still be refused if it would mix two cuts of time.
        """
        parts = list(parts)
        records = [w for part, _ in parts for w in part.windows.values()]
        sizes = {w.end - w.start for w in records}
        if len(sizes) == 1:
            window = sizes.pop()
        if records:
            table_format = "iceberg" if records[0].snapshot is not None else "hive"
        head = cls(table_format=table_format, window=window)
        for part, version in parts:
            head = head.with_partition(part, version)
        return head

    def feed(self, name: str) -> FeedState:
        """The state of feed ``name`` (empty if the lake has none of it)."""
        return self.feeds.get(name) or FeedState()

    def with_feed(self, name: str, state: FeedState) -> Head:
        """The head with ``name``'s state replaced."""
        return replace(self, feeds={**self.feeds, name: state})

    def with_partition(
        self, part: Partition, version: str, *, queries: Mapping[str, Any] | None = None
    ) -> Head:
        """The head with ``part``'s month recomputed from ``part`` (at ``version``).

        Idempotent, and it heals: whatever the head believed about that month before,
        afterwards it says what the partition says.
        """
        state = self.feed(part.feed)
        domain = Spans.one(*month_domain(part.month, self.window))
        complete: dict[str, Spans] = {}
        for fp, spans in state.complete.items():
            complete[fp] = spans - domain
        for fp in {w.fingerprint for w in part.windows.values()}:
            complete[fp] = complete.get(fp, Spans()) | part.complete(fp)
        complete = {fp: s for fp, s in complete.items() if s}
        all_queries = {**state.queries, **(queries or {})}
        seq = self.seq + 1
        months = dict(state.months)
        if part.windows:
            months[part.month] = MonthSummary(
                rows=part.rows, windows=len(part.windows), version=version, seq=seq
            )
        else:
            months.pop(part.month, None)
        done_at = max((w.completed_at for w in part.windows.values()), default=None)
        latest = max(x for x in (state.last_completed_at, done_at, -1) if x is not None)
        covered = Spans()
        for spans in complete.values():
            covered = covered | spans
        new = replace(
            state,
            complete=complete,
            queries={fp: q for fp, q in all_queries.items() if fp in complete},
            failed=tuple(_cut(state.failed, covered)),
            months=dict(sorted(months.items())),
            last_completed_at=latest if latest >= 0 else None,
        )
        return replace(self.with_feed(part.feed, new), seq=seq)

    def with_failures(self, feed: str, failures: Iterable[FailedSpan]) -> Head:
        """The head with ``failures`` recorded (replacing older failures of those windows)."""
        new = list(failures)
        if not new:
            return self
        state = self.feed(feed)
        fresh = Spans.of((f.start, f.end) for f in new)
        kept = _cut(state.failed, fresh | state.covered)
        failed = _merge_failures([*kept, *_cut(new, state.covered)])
        return replace(self.with_feed(feed, replace(state, failed=failed)), seq=self.seq + 1)

    def with_run(self, run: Mapping[str, Any], *, feeds: Iterable[str], keep: int = 20) -> Head:
        """The head with ``run`` (a run report's summary) as the latest of its shard."""
        run_id, shard = str(run["run_id"]), str(run.get("shard", "0/1"))
        shards = {**self.shards, shard: run_id}
        touched = set(feeds)
        states = {
            name: replace(state, last_run=run_id) if name in touched else state
            for name, state in self.feeds.items()
        }
        for name in touched - set(states):
            states[name] = FeedState(last_run=run_id)
        runs = {**self.runs, run_id: dict(run)}
        needed = set(shards.values()) | {s.last_run for s in states.values() if s.last_run}
        recent = sorted(runs, key=lambda r: str(runs[r].get("ended_at", "")))[-keep:]
        runs = {r: v for r, v in runs.items() if r in needed or r in recent}
        return replace(self, shards=shards, feeds=states, runs=runs, seq=self.seq + 1)

    def resume_point(self, feed: str, fingerprint: str, start: int | None) -> int | None:
        """The end of the contiguous complete windows of ``fingerprint`` from ``start``.

        From the first complete window when ``start`` is None; ``start`` itself when no
        complete window begins there. None when the feed has nothing with that query.
        """
        spans = self.feed(feed).complete.get(fingerprint, Spans())
        if start is None:
            return spans.pairs[0][1] if spans else None
        held = spans.containing(start)
        return held[1] if held else start

    def to_json(self) -> dict[str, Any]:
        """The head as JSON-able data."""
        return {
            "kind": KIND,
            "version": VERSION,
            "table_format": self.table_format,
            "window": self.window,
            "seq": self.seq,
            "legacy": self.legacy,
            "feeds": {
                name: {
                    "complete": {fp: s.to_json() for fp, s in state.complete.items()},
                    "queries": dict(state.queries),
                    "failed": [[f.start, f.end, f.error, f.reason, f.run_id] for f in state.failed],
                    "months": {
                        m: [s.rows, s.windows, s.version, s.seq] for m, s in state.months.items()
                    },
                    "last_completed_at": state.last_completed_at,
                    "last_run": state.last_run,
                }
                for name, state in sorted(self.feeds.items())
            },
            "runs": dict(self.runs),
            "shards": dict(sorted(self.shards.items())),
            "verify": dict(self.verify),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Head:
        """Inverse of :meth:`to_json`; raises KeyError/TypeError/ValueError if malformed."""
        if body.get("kind") != KIND or body.get("version") != VERSION:
            raise ValueError("not a version 2 manifest head")
        feeds = {}
        for name, state in body["feeds"].items():
            feeds[str(name)] = FeedState(
                complete={fp: Spans.of(s) for fp, s in state["complete"].items()},
                queries=dict(state.get("queries", {})),
                failed=tuple(
                    FailedSpan(start=int(a), end=int(b), error=str(c), reason=str(d), run_id=str(e))
                    for a, b, c, d, e in state["failed"]
                ),
                months={
                    m: MonthSummary(rows=int(r), windows=int(w), version=str(v), seq=int(s))
                    for m, (r, w, v, s) in state["months"].items()
                },
                last_completed_at=state.get("last_completed_at"),
                last_run=state.get("last_run"),
            )
        return cls(
            table_format=str(body["table_format"]),
            window=int(body["window"]),
            seq=int(body["seq"]),
            feeds=feeds,
            runs=dict(body.get("runs", {})),
            shards=dict(body.get("shards", {})),
            verify=dict(body.get("verify", {})),
            legacy=str(body.get("legacy", "none")),
        )
