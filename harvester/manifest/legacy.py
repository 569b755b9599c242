"""The version 1 manifest, read once to migrate a lake written by an older harvester.

Version 1 kept one object per complete (feed, window) at
``_manifest/{feed}/{START}_{END}.json`` and one data file per (feed, window, day), and
every run read every object. The first run of this version on such a lake migrates it:

1. one listing of ``_manifest/`` finds the version 1 objects, and one listing per feed
   finds the data files (their sizes and versions; a file no object names was left by
   a killed run and is recorded as belonging to no complete window);
2. every object is read once, and the windows and files are written as version 2
   partitions (one per feed and month);
3. the still-failed windows and the last run of each shard are taken from ``_runs/``;
4. the head is written -- from then on the lake is version 2 -- marked ``cleanup``;
5. the version 1 objects are deleted, and the head's mark is cleared.

A crash before 4 leaves the lake at version 1, and the next run migrates again (every
write is idempotent); a crash in 5 leaves the mark, and the next run finishes the
cleanup. Runs that migrate at once (shards starting together) write the same
partitions, and one creates the head; a partition a run has already committed to
(under a lease) is never overwritten by a slower migration. The data files stay as
they are: each is a file holding one window, which version 2 reads; a run that writes
one of their days folds them into one file then (:mod:`harvester.lake.writer`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from harvester.errors import ConfigError
from harvester.intervals import Spans
from harvester.lake.layout import is_legacy
from harvester.manifest.io import PREFIX, Manifest, Versioned
from harvester.manifest.model import (
    FailedSpan,
    FileRecord,
    Head,
    Partition,
    WindowRecord,
    month_of,
)
from harvester.storage import ObjectInfo, Store
from harvester.windows import parse_api, parse_compact

ENTRY = re.compile(
    rf"^{PREFIX}/(?P<feed>[a-z_]+)/(?P<start>\d{{8}}T\d{{6}}Z)_(?P<end>\d{{8}}T\d{{6}}Z)\.json$"
)
FILE_WINDOW = re.compile(r"/part-(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)\.parquet$")
PARALLEL = 16

log = structlog.get_logger("harvester")


def _epoch(compact: str) -> int:
    return int(parse_compact(compact).timestamp())


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One version 1 manifest object: a complete (feed, window)."""

    feed: str
    start: int
    end: int
    fingerprint: str
    query: Mapping[str, Any]
    rows: int
    files: tuple[str, ...]
    completed_at: int
    run_id: str

    @classmethod
    def parse(cls, key: str, data: bytes) -> Entry | None:
        """The entry, or None (logged) when the object is damaged."""
        try:
            body = orjson.loads(data)
            start = int(parse_api(body["window"]["start"]).timestamp())
            end = int(parse_api(body["window"]["end"]).timestamp())
            done = body.get("completed_at") or ""
            return cls(
                feed=str(body["feed"]),
                start=start,
                end=end,
                fingerprint=str(body["fingerprint"]),
                query=dict(body.get("query") or {}),
                rows=int(body["rows"]),
                files=tuple(str(f["key"]) for f in body["files"]),
                completed_at=int(parse_api(done).timestamp()) if done else end,
                run_id=str(body.get("run_id", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("manifest.damaged", key=key, error=str(exc))
            return None


async def legacy_keys(store: Store) -> list[str]:
    """The version 1 manifest objects of the lake (one listing)."""
    return [i.key for i in await store.list(f"{PREFIX}/") if ENTRY.match(i.key)]


async def _read_entries(store: Store, keys: Iterable[str]) -> list[Entry]:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(key: str) -> Entry | None:
        async with gate:
            blob = await store.read(key)
        return None if blob is None else Entry.parse(key, blob.data)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(k)) for k in keys]
    return [e for t in tasks if (e := t.result()) is not None]


async def build(
    store: Store, keys: list[str], *, table_format: str
) -> tuple[Head, list[Partition]]:
    """The version 2 head and partitions of a version 1 lake (reads only; no write)."""
    entries = await _read_entries(store, keys)
    sizes = {e.end - e.start for e in entries}
    if len(sizes) > 1:
        raise ConfigError(
            "the lake's version 1 manifest mixes window sizes "
            f"({', '.join(sorted(str(s) for s in sizes))} seconds); it cannot be migrated: "
            "harvest into a new --out"
        )
    step = sizes.pop() if sizes else 86_400
    feeds = sorted({e.feed for e in entries})
    listed: dict[str, ObjectInfo] = {}
    for feed in feeds:
        listed.update(
            (i.key, i) for i in await store.list(f"{feed}/") if i.key.endswith(".parquet")
        )
    parts: dict[tuple[str, str], Partition] = {}
    queries: dict[str, Mapping[str, Any]] = {}
    held: set[str] = set()
    for entry in entries:
        queries[entry.fingerprint] = entry.query
        month = month_of(entry.start)
        part = parts.get((entry.feed, month)) or Partition(feed=entry.feed, month=month)
        files = [
            _file_record(listed[k], entry.rows if len(entry.files) == 1 else 0)
            for k in entry.files
            if k in listed
        ]
        held.update(f.key for f in files)
        window = WindowRecord(
            start=entry.start,
            end=entry.end,
            fingerprint=entry.fingerprint,
            rows=entry.rows,
            run_id=entry.run_id,
            completed_at=entry.completed_at,
            files=tuple(f.key for f in files),
        )
        parts[(entry.feed, month)] = part.with_changes(windows=[window], files=files)
    for key, info in listed.items():
        if key not in held and is_legacy(key):
            # Left by a run killed between writing the file and recording it: no
            # complete window is in it, but the day's next write must fold it away.
            feed = key.split("/", 1)[0]
            record = _file_record(info, 0)
            month = month_of(record.windows.pairs[0][0])
            part = parts.get((feed, month)) or Partition(feed=feed, month=month)
            parts[(feed, month)] = part.with_changes(files=[record])
    head = Head(table_format=table_format, window=step, legacy="cleanup")
    for part in parts.values():
        head = head.with_partition(part, "", queries=queries)
    head = await _with_reports(store, head)
    return head, list(parts.values())


def _file_record(info: ObjectInfo, rows: int) -> FileRecord:
    match = FILE_WINDOW.search(info.key)
    assert match is not None
    day = info.key.split("/dt=", 1)[1][:10]
    return FileRecord(
        key=info.key,
        day=day,
        size=info.size,
        version=info.version,
        rows=rows,
        windows=Spans.one(_epoch(match[1]), _epoch(match[2])),
    )


async def _with_reports(store: Store, head: Head) -> Head:
    """Still-failed windows and each shard's last run, from version 1 run reports."""
    reports = []
    for info in await store.list("_runs/"):
        blob = await store.read(info.key)
        if blob is None:
            continue
        try:
            reports.append(orjson.loads(blob.data))
        except orjson.JSONDecodeError:
            continue  # a report is informational
    reports.sort(key=lambda r: (str(r.get("ended_at", "")), str(r.get("run_id", ""))))
    for report in reports:
        failures: dict[str, list[FailedSpan]] = {}
        for failure in report.get("failures", []):
            span = _failure_span(failure)
            if span is not None:
                failed = FailedSpan(
                    start=span[0],
                    end=span[1],
                    error=str(failure.get("error", "")),
                    reason=str(failure.get("reason", "")),
                    run_id=str(report.get("run_id", "")),
                )
                failures.setdefault(str(failure.get("feed", "")), []).append(failed)
        for feed, spans in failures.items():
            head = head.with_failures(feed, spans)
        view = {
            "run_id": str(report.get("run_id", "")),
            "shard": str(report.get("parameters", {}).get("shard", "0/1")),
            "started_at": report.get("started_at"),
            "ended_at": report.get("ended_at"),
            "ok": bool(report.get("ok")),
            "interrupted": bool(report.get("interrupted")),
            "failures": len(report.get("failures", [])),
        }
        head = head.with_run(view, feeds=list(report.get("feeds", {})))
    return replace(head, seq=0)


_LABEL = re.compile(r"^\[(?P<start>[^,\s]+),\s*(?P<end>[^)\s]+)\)$")


def _failure_span(failure: Mapping[str, Any]) -> tuple[int, int] | None:
    try:
        if "start" in failure:
            start, end = failure["start"], failure["end"]
        else:
            match = _LABEL.match(str(failure.get("window", "")).strip())
            if not match:
                return None
            start, end = match["start"], match["end"]
        low = int(datetime.fromisoformat(start).astimezone(UTC).timestamp())
        high = int(datetime.fromisoformat(end).astimezone(UTC).timestamp())
    except (KeyError, TypeError, ValueError):
        return None
    return (low, high) if low < high else None


async def migrate(manifest: Manifest, keys: list[str], *, table_format: str) -> Head:
    """Migrate a version 1 lake to version 2 (see the module docstring); return the head."""
    log.info("manifest.migrating", objects=len(keys))
    head, parts = await build(manifest.store, keys, table_format=table_format)
    return await install(manifest, head, parts)


async def install(manifest: Manifest, head: Head, parts: list[Partition]) -> Head:
    """Write what :func:`build` made, then clean up (steps 2, 4 and 5 of the docstring)."""
    written: list[tuple[Partition, str]] = []
    for part in parts:
        updated: Versioned = await manifest.update_partition(
            part.feed,
            part.month,
            lambda old, new=part: _migrated(old, new),  # type: ignore[misc]
            token=None,
        )
        assert updated.version is not None
        written.append((updated.part, updated.version))

    def create(current: Head | None) -> Head:
        if current is not None:
            return current  # another run migrated first
        new = head
        for part, version in written:
            new = new.with_partition(part, version)
        return new

    head = await manifest.update_head(create)
    return await finish_cleanup(manifest, head)


def _migrated(old: Partition, new: Partition) -> Partition:
    """The partition to write for a month: ``new`` (from version 1), unless a run wrote since.

    A partition holding a lease token (> 0) was committed to by a version 2 run: another
    run migrated this lake first (shards starting together) and has harvested since,
    perhaps folding and deleting the very files ``new`` records. It is newer than any
    version 1 object and is kept. One written by an earlier, crashed migration (token 0)
    is replaced.
    """
    return old if old.token > 0 else new


async def finish_cleanup(manifest: Manifest, head: Head) -> Head:
    """Delete the version 1 objects left after a migration; clear the head's mark."""
    if head.legacy != "cleanup":
        return head
    keys = await legacy_keys(manifest.store)
    gate = asyncio.Semaphore(PARALLEL)

    async def delete(key: str) -> None:
        async with gate:
            await manifest.store.delete(key)

    async with asyncio.TaskGroup() as group:
        for key in keys:
            group.create_task(delete(key))
    log.info("manifest.migrated", objects=len(keys))

    def done(current: Head | None) -> Head:
        assert current is not None
        return replace(current, legacy="none", seq=current.seq + 1)

    return await manifest.update_head(done)
