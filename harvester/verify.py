"""``harvester verify``: does the lake still hold what its manifest says, and the repair.

Per feed, one listing of ``{feed}/`` (paged, a thousand keys a request on S3) gives every
data file's size; the feed's manifest partitions (one read per month) give what each
file should be. A *damaged* lake is one where:

* a recorded file is **missing**, or has another **size** than recorded;
* with ``--deep``, a file's Parquet footer cannot be read, or holds another **row count**
  (this reads every file's footer: locally cheap, on S3 a download per file);
* a data file is **unrecorded** (no partition names it): left by a run killed between
  writing and recording it, or put there by hand. Readers see its rows;
* a manifest partition is **damaged** (unreadable).

With ``--repair``, under the month's lease (so never beside a run that works on it), the
windows whose files are missing or wrong are made incomplete in the partition and the
head, their files dropped, and unrecorded files deleted; the next ``run`` over the range
(or the nightly ``--since-last``, which resumes from the first gap) harvests them again.
What was found is kept in the head, so ``status`` shows it without listing the lake.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import pyarrow.parquet as pq
import structlog

from harvester.errors import ConfigError, Conflict, StorageError
from harvester.intervals import Spans
from harvester.lake.layout import day_start, is_legacy
from harvester.leases import Leases
from harvester.manifest.io import PARTITION, PREFIX, Manifest, Versioned, partition_key
from harvester.manifest.model import FileRecord, Head, Partition, month_of
from harvester.storage import ObjectInfo, Store

log = structlog.get_logger("harvester")


@dataclass(kw_only=True)
class FeedCheck:
    """What verify found for one feed."""

    files: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    bad_footer: list[str] = field(default_factory=list)
    wrong_rows: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    damaged_partitions: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    """The version each unrecorded file was listed at (a repair deletes only that one)."""
    windows_lost: int = 0
    """Complete windows whose rows are (partly) gone: harvested again after a repair."""
    repaired: bool = False

    @property
    def broken(self) -> list[str]:
        """Recorded files that are not what the manifest says."""
        return sorted({*self.missing, *self.wrong_size, *self.bad_footer, *self.wrong_rows})

    @property
    def ok(self) -> bool:
        """Nothing found."""
        return not (self.broken or self.unrecorded or self.damaged_partitions)

    def to_json(self) -> dict[str, Any]:
        """JSON-able, as the head keeps it and ``--json`` prints it."""
        return {
            "ok": self.ok,
            "files": self.files,
            "missing": self.missing,
            "wrong_size": self.wrong_size,
            "bad_footer": self.bad_footer,
            "wrong_rows": self.wrong_rows,
            "unrecorded": self.unrecorded,
            "damaged_partitions": self.damaged_partitions,
            "windows_lost": self.windows_lost,
            "repaired": self.repaired,
        }


@dataclass(kw_only=True)
class Report:
    """What verify found, per feed, and what it cost."""

    feeds: dict[str, FeedCheck]
    at: int
    store_calls: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No feed has damage."""
        return all(c.ok for c in self.feeds.values())


async def verify(
    store: Store,
    *,
    feeds: Sequence[str] | None = None,
    deep: bool = False,
    repair: bool = False,
    run_id: str | None = None,
) -> Report:
    """Check (and with ``repair``, repair) the lake in ``store``; record the result.

    ``run_id`` names the leases' owner (a run's own id for ``run --repair``); by
    default a fresh one, so that two verifies never take each other's leases for
    their own.
    """
    manifest = Manifest(store)
    head, _ = await manifest.read_head()
    if head is not None and head.table_format != "hive":
        # An Iceberg table's files are recorded by the table itself, not by our partitions:
        # "nothing missing" would be a check of nothing.
        raise ConfigError(
            f"harvester verify checks Hive lakes only; {store.url('')} holds Iceberg tables, "
            "which record their own files (remove stray ones with `harvester maintain "
            "--orphans-older-than`)"
        )
    known = sorted(head.feeds) if head else []
    names = [f for f in (feeds or known) if f in known]
    checks: dict[str, FeedCheck] = {}
    owner = run_id or f"verify-{uuid.uuid4().hex[:12]}"
    leases = Leases(store, owner) if repair else None
    try:
        for feed in names:
            assert head is not None
            checks[feed] = await _check_feed(store, manifest, head, feed, deep=deep, leases=leases)
    finally:
        if leases is not None:
            await leases.release_all()
    report = Report(feeds=checks, at=int(time.time()))
    if names:
        view = {f: {**c.to_json(), "at": report.at} for f, c in checks.items()}

        def record(current: Head | None) -> Head:
            assert current is not None
            return replace(current, verify={**current.verify, **view}, seq=current.seq + 1)

        await manifest.update_head(record)
    for feed, check in checks.items():
        log.info(
            "verify.feed", feed=feed, **{k: v for k, v in check.to_json().items() if k != "ok"}
        )
    return report


async def _check_feed(
    store: Store,
    manifest: Manifest,
    head: Head,
    feed: str,
    *,
    deep: bool,
    leases: Leases | None,
) -> FeedCheck:
    check = FeedCheck()
    listed = {i.key: i for i in await store.list(f"{feed}/") if i.key.endswith(".parquet")}
    months = sorted(head.feed(feed).months) or await _months_on_disk(store, feed)
    parts = await manifest.read_partitions(feed, months)
    recorded: set[str] = set()
    _check_parts(feed, parts, listed, recorded, check)
    # A run killed between writing a partition and the head leaves a month the head does
    # not list yet: its files are recorded there, not unrecorded. Read those months too
    # (only when such a file turns up, so a sound lake costs no extra read).
    unknown = {_month_of_key(k, head.window) for k in listed if k not in recorded}
    extra = sorted(unknown - set(parts) - {""})
    if extra:
        more = await manifest.read_partitions(feed, extra)
        _check_parts(feed, more, listed, recorded, check)
        parts = {**parts, **more}
    if deep:
        await _deep(store, [parts[m].part for m in parts], listed, check)
    check.unrecorded = sorted(k for k in listed if k not in recorded and "/data/" not in k)
    check.versions = {k: listed[k].version for k in check.unrecorded}
    broken = set(check.broken)
    for current in parts.values():
        check.windows_lost += sum(
            1 for w in current.part.windows.values() if broken.intersection(w.files)
        )
    if leases is not None and not check.ok:
        check.repaired = await _repair(store, manifest, feed, parts, check, leases, head.window)
    return check


def _check_parts(
    feed: str,
    parts: dict[str, Versioned],
    listed: dict[str, ObjectInfo],
    recorded: set[str],
    check: FeedCheck,
) -> None:
    """Compare the files ``parts`` record with the listing; note what they record."""
    for month, current in parts.items():
        if current.damaged is not None:
            check.damaged_partitions.append(partition_key(feed, month))
        complete = current.part.complete()
        for record in current.part.files.values():
            recorded.add(record.key)
            check.files += 1
            if record.key not in listed and _folding(record, complete):
                continue
            _compare(record, listed.get(record.key), check)


def _month_of_key(key: str, step: int) -> str:
    """The month whose partition records data file ``key``: its first window's month.

    A window longer than a day that starts in one month may hold days of the next.
    """
    day = day_of_key(key)
    if not day:
        return ""
    start = day_start(date.fromisoformat(day))
    return month_of(start // step * step)


async def _months_on_disk(store: Store, feed: str) -> list[str]:
    """The partitions of ``feed`` when the head lists none (a damaged or rebuilt head)."""
    found = [m for i in await store.list(f"{PREFIX}/{feed}/") if (m := PARTITION.match(i.key))]
    return [m["month"] for m in found]


def _folding(record: FileRecord, complete: Spans) -> bool:
    """True for a version 1 file a killed fold deleted: none of its windows is complete.

    The fold made its windows incomplete before deleting anything, and the next write of
    the day folds what is left; nothing recorded as complete is lost.
    """
    return is_legacy(record.key) and not (record.windows & complete)


def _compare(record: FileRecord, found: ObjectInfo | None, check: FeedCheck) -> None:
    if found is None:
        check.missing.append(record.key)
    elif found.size != record.size:
        check.wrong_size.append(record.key)


async def _deep(
    store: Store,
    parts: Iterable[Partition],
    listed: dict[str, ObjectInfo],
    check: FeedCheck,
) -> None:
    """Read every present recorded file's footer: readable, and the recorded rows."""
    for part in parts:
        for record in part.files.values():
            if record.key not in listed or record.key in check.wrong_size:
                continue
            async with store.fetch(record.key) as found:
                if found is None:
                    check.missing.append(record.key)
                    continue
                try:
                    rows = await asyncio.to_thread(_rows, found[0])
                except (OSError, ValueError) as exc:
                    log.warning("verify.bad_footer", key=record.key, error=str(exc))
                    check.bad_footer.append(record.key)
                    continue
                if rows != record.rows:
                    check.wrong_rows.append(record.key)


def _rows(path: Any) -> int:
    return int(pq.read_metadata(path).num_rows)


async def _repair(
    store: Store,
    manifest: Manifest,
    feed: str,
    parts: dict[str, Versioned],
    check: FeedCheck,
    leases: Leases,
    step: int,
) -> bool:
    """Make the damaged windows incomplete and delete unrecorded files, month by month."""
    broken = set(check.broken)
    unrecorded = set(check.unrecorded)
    owner = {k: _month_of_key(k, step) for k in unrecorded}
    months = sorted(set(parts) | {m for m in owner.values() if m})
    done = True
    for month in months:
        if not await leases.acquire((feed, month)):
            log.warning("verify.month_held", feed=feed, month=month)
            done = False
            continue
        seen = parts.get(month)
        # The check was made before the lease was ours: a run may have committed the
        # month since (recorded a file found unrecorded, rewritten one found damaged) and
        # given it up. So the partition is read again, and only what is still as found
        # is acted on: a file record unchanged since the check; a file still unrecorded,
        # deleted only at the version listed.
        fresh = await manifest.read_partition(feed, month)
        for key in sorted(k for k in unrecorded if owner[k] == month and k not in fresh.part.files):
            try:
                await store.delete(key, expect=check.versions.get(key))
            except (Conflict, StorageError) as exc:
                log.warning("verify.delete_failed", key=key, error=str(exc))
                done = False
        still = {
            k
            for k in broken
            if seen is not None
            and k in seen.part.files
            and fresh.part.files.get(k) == seen.part.files[k]
        }
        drop_windows = [w.start for w in fresh.part.windows.values() if still.intersection(w.files)]
        drop_files = sorted(still)
        if drop_windows or drop_files or fresh.damaged is not None:

            def change(
                part: Partition, dw: list[int] = drop_windows, df: list[str] = drop_files
            ) -> Partition:
                return part.with_changes(drop_windows=dw, drop_files=df)

            updated = await manifest.update_partition(
                feed, month, change, token=leases.token((feed, month))
            )
            assert updated.version is not None
            await manifest.update_head(_heal(updated.part, updated.version))
    return done


def _heal(part: Partition, version: str) -> Callable[[Head | None], Head]:
    """The head change that makes ``part``'s month what the partition now says."""

    def change(head: Head | None) -> Head:
        assert head is not None
        return head.with_partition(part, version)

    return change


def day_of_key(key: str) -> str:
    """The ``YYYY-MM-DD`` of a data file's ``dt=`` folder ("" if it has none)."""
    _, sep, rest = key.partition("/dt=")
    return rest[:10] if sep else ""
