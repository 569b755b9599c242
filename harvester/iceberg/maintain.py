"""``harvester maintain``: compact small files, expire old snapshots, remove orphan files.

pyiceberg 0.12 expires snapshots (metadata only) but can neither compact nor find
orphans, so the other two are ours. Per feed table, in this order:

1. **Compact.** In each day partition, data files smaller than ``small_file_bytes``
   (a group commit of a few sparse windows makes such files) are streamed, a record
   batch at a time, into one new file per ``target_file_bytes`` of input. One commit
   removes exactly those inputs and adds the output. If a concurrent commit removed an
   input, or added a file to that day, pyiceberg refuses the commit: the output is
   deleted and the day is reported as skipped (the next run tries again).
2. **Expire** snapshots older than ``older_than`` (never the current one, nor a branch
   or tag head). Units committed in them stay done (see :mod:`.ancestry`).
3. **Remove orphans**: files under the table's ``data/`` and ``metadata/`` folders that
   no retained snapshot, metadata file or the version hint references, and that are
   older than ``orphans_older_than`` (one day by default). The grace period protects a
   writer's files between their upload and its commit, so it must exceed the longest
   group commit. Files of the snapshots just expired are removed in the same run.

With ``dry_run`` nothing is written: the report says what would be done.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import structlog

from harvester import windows
from harvester.config import MAINTAIN_DEFAULTS
from harvester.errors import ConfigError
from harvester.iceberg.commit import day_of, file_stamp_bounds, micros, window_filter
from harvester.iceberg.hint import HINT_FILE, publish_hint_quietly
from harvester.iceberg.tables import (
    READ_BATCH_ROWS,
    DataFileWriter,
    catalog_errors,
    data_file_path,
    load_table,
)

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

    from harvester.iceberg.catalog import IcebergLake

log = structlog.get_logger("harvester.iceberg")

MiB = 1024 * 1024
DEFAULT_OLDER_THAN = MAINTAIN_DEFAULTS["older_than"]
DEFAULT_ORPHANS_OLDER_THAN = MAINTAIN_DEFAULTS["orphans_older_than"]
SMALL_FILE_BYTES = 32 * MiB
TARGET_FILE_BYTES = 256 * MiB
EXPIRE_ATTEMPTS = 5
def parse_age(text: str, *, flag: str) -> timedelta:
    """``7d``, ``12h``, ``30m``: a whole number of days, hours or minutes, more than 0."""
    try:
        age = windows.parse_age(text, name=flag)
    except ConfigError:  # not a duration, or longer than any date range
        age = timedelta(0)
    if not age:
        raise ConfigError(f"{flag} {text!r} is not an age; use e.g. 7d, 12h or 30m")
    return age


@dataclass(frozen=True, kw_only=True)
class MaintainOptions:
    """What ``maintain`` does; the defaults are the CLI's."""

    older_than: timedelta = field(default_factory=lambda: parse_age(DEFAULT_OLDER_THAN, flag=""))
    orphans_older_than: timedelta = field(
        default_factory=lambda: parse_age(DEFAULT_ORPHANS_OLDER_THAN, flag="")
    )
    dry_run: bool = False
    small_file_bytes: int = SMALL_FILE_BYTES
    target_file_bytes: int = TARGET_FILE_BYTES

    def __post_init__(self) -> None:
        if self.older_than <= timedelta(0) or self.orphans_older_than <= timedelta(0):
            raise ConfigError("--older-than and --orphans-older-than must be more than 0")
        if not 0 < self.small_file_bytes <= self.target_file_bytes:
            raise ValueError("need 0 < small_file_bytes <= target_file_bytes")


@dataclass(frozen=True, kw_only=True)
class Compaction:
    """One day's small files to be rewritten as one, and what became of it."""

    day: date
    inputs: tuple[str, ...]
    input_bytes: int
    rows: int
    status: str = "planned"
    """``planned`` (dry run), ``done``, or ``skipped: REASON``."""
    output: str | None = None


@dataclass(frozen=True, kw_only=True)
class Orphan:
    """A file no metadata references."""

    path: str
    size: int
    modified: datetime


@dataclass(frozen=True, kw_only=True)
class TableReport:
    """What ``maintain`` did, or would do, to one table."""

    table: str
    dry_run: bool
    compactions: tuple[Compaction, ...] = ()
    expired: tuple[int, ...] = ()
    orphans: tuple[Orphan, ...] = ()

    def describe(self) -> dict[str, Any]:
        """JSON-able form, for ``--json``."""
        return {
            "table": self.table,
            "dry_run": self.dry_run,
            "compactions": [
                {
                    "day": c.day.isoformat(),
                    "inputs": list(c.inputs),
                    "input_bytes": c.input_bytes,
                    "rows": c.rows,
                    "status": c.status,
                    "output": c.output,
                }
                for c in self.compactions
            ],
            "expired_snapshots": list(self.expired),
            "orphans": [
                {"path": o.path, "size": o.size, "modified": o.modified.isoformat()}
                for o in self.orphans
            ],
        }


def maintain_lake(
    lake: IcebergLake,
    feeds: Iterable[str],
    options: MaintainOptions,
    *,
    now: datetime | None = None,
) -> list[TableReport]:
    """:func:`maintain_table` for every feed's table that exists."""
    now = now or datetime.now(UTC)
    reports = []
    for feed in feeds:
        table = load_table(lake, feed)
        if table is not None:
            reports.append(maintain_table(table, options, now=now))
    return reports


def maintain_table(table: Table, options: MaintainOptions, *, now: datetime) -> TableReport:
    """Compact, expire and remove orphans (see the module), or plan it with ``dry_run``."""
    name = ".".join(table.name())
    with catalog_errors(f"table {name}"):
        table.refresh()
        compactions = []
        for planned in plan_compaction(
            table,
            small_file_bytes=options.small_file_bytes,
            target_file_bytes=options.target_file_bytes,
        ):
            compactions.append(planned if options.dry_run else compact(table, planned))
        expired = expire_snapshots(table, now - options.older_than, dry_run=options.dry_run)
        orphans = find_orphans(
            table,
            older_than=now - options.orphans_older_than,
            ignoring=set(expired) if options.dry_run else set(),
        )
        if not options.dry_run:
            remove_files(table, [o.path for o in orphans])
            publish_hint_quietly(table)
    report = TableReport(
        table=name,
        dry_run=options.dry_run,
        compactions=tuple(compactions),
        expired=tuple(expired),
        orphans=tuple(orphans),
    )
    log.info(
        "iceberg.maintain",
        table=name,
        dry_run=options.dry_run,
        compacted=sum(1 for c in compactions if c.status in ("done", "planned")),
        skipped=sum(1 for c in compactions if c.status.startswith("skipped")),
        expired=len(expired),
        orphans=len(orphans),
    )
    return report


def _live_files(table: Table) -> list[DataFile]:
    return [task.file for task in table.scan().plan_files()]


def plan_compaction(
    table: Table, *, small_file_bytes: int, target_file_bytes: int
) -> list[Compaction]:
    """Per day, the small files of the current snapshot, in groups of at most the target.

    A group needs at least two files: rewriting one file alone gains nothing.
    """
    by_day: dict[date, list[DataFile]] = defaultdict(list)
    for data_file in _live_files(table):
        if data_file.file_size_in_bytes < small_file_bytes:
            by_day[day_of(file_stamp_bounds(table, data_file)[0])].append(data_file)
    plans = []
    for the_day, files in sorted(by_day.items()):
        group: list[DataFile] = []
        for data_file in sorted(files, key=lambda f: f.file_path):
            if (
                group
                and sum(f.file_size_in_bytes for f in group) + (data_file.file_size_in_bytes)
                > target_file_bytes
            ):
                plans.append(_compaction(the_day, group))
                group = []
            group.append(data_file)
        plans.append(_compaction(the_day, group))
    return [p for p in plans if len(p.inputs) >= 2]


def _compaction(the_day: date, files: Sequence[DataFile]) -> Compaction:
    return Compaction(
        day=the_day,
        inputs=tuple(f.file_path for f in files),
        input_bytes=sum(f.file_size_in_bytes for f in files),
        rows=sum(f.record_count for f in files),
    )


def compact(table: Table, planned: Compaction) -> Compaction:
    """Rewrite ``planned``'s inputs into one file and commit, or give up cleanly.

    The inputs must still be live when the commit lands; pyiceberg checks that on any
    concurrent commit (and refuses one that added a file to the same day). Memory: one
    record batch.
    """
    from pyiceberg.exceptions import CommitFailedException, ValidationException
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    live = {f.file_path: f for f in _live_files(table)}
    inputs = [live.get(path) for path in planned.inputs]
    if any(f is None for f in inputs):
        return _skipped(planned, "an input is no longer in the table")
    path = data_file_path(table.location(), planned.day, prefix="compact")
    rows = 0
    try:
        with table.io.new_output(path).create() as sink:
            writer: DataFileWriter | None = None
            try:
                for source_path in planned.inputs:
                    with table.io.new_input(source_path).open() as source:
                        reader = pq.ParquetFile(source)
                        if writer is None:
                            feed = table.name()[-1]
                            writer = DataFileWriter(sink, feed, schema=reader.schema_arrow)
                        elif not reader.schema_arrow.equals(writer.schema, check_metadata=True):
                            raise _Skip("the inputs' schemas differ")
                        for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS):
                            writer.write(batch)
            finally:
                if writer is not None:
                    writer.close()
                    rows = writer.rows
        if rows != planned.rows:
            raise _Skip(f"the inputs hold {rows} rows, the manifests said {planned.rows}")
        output = parquet_file_to_data_file(table.io, table.metadata, path)
        start = datetime(planned.day.year, planned.day.month, planned.day.day, tzinfo=UTC)
        day_range = (micros(start), micros(start + timedelta(days=1)))
        transaction = table.transaction()
        with transaction.update_snapshot(
            snapshot_properties={"harvester.operation": "compact"}
        ).overwrite() as producer:
            # Scopes pyiceberg's conflict check to this day: a concurrent commit that
            # added a file here, or removed an input, refuses ours.
            producer.delete_by_predicate(window_filter([day_range]))
            for data_file in inputs:
                assert data_file is not None
                producer.delete_data_file(data_file)
            producer.append_data_file(output)
        transaction.commit_transaction()
    except (_Skip, CommitFailedException, ValidationException) as exc:
        _delete(table, path)
        return _skipped(planned, str(exc)[:1].lower() + str(exc)[1:])
    except BaseException:
        _delete(table, path)
        raise
    return replace(planned, status="done", output=path)


class _Skip(Exception):
    """A compaction that should not go ahead; the reason is its message."""


def _skipped(planned: Compaction, reason: str) -> Compaction:
    log.info("iceberg.compact_skipped", day=planned.day.isoformat(), reason=reason)
    return replace(planned, status=f"skipped: {reason}")


def _delete(table: Table, path: str) -> None:
    try:
        table.io.delete(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("iceberg.cleanup_failed", path=path, error=str(exc))


def expire_snapshots(table: Table, before: datetime, *, dry_run: bool) -> list[int]:
    """Expire the snapshots made before ``before`` that are no branch or tag head.

    Returns their ids (those that would be expired, with ``dry_run``). A commit that
    loses a race with a writer is retried on the refreshed table.
    """
    from pyiceberg.exceptions import CommitFailedException

    cutoff = before.timestamp() * 1000
    for attempt in range(1, EXPIRE_ATTEMPTS + 1):
        protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
        doomed = sorted(
            s.snapshot_id
            for s in table.metadata.snapshots
            if s.timestamp_ms < cutoff and s.snapshot_id not in protected
        )
        if dry_run or not doomed:
            return doomed
        try:
            table.maintenance.expire_snapshots().by_ids(doomed).commit()
            return doomed
        except CommitFailedException:
            if attempt == EXPIRE_ATTEMPTS:
                raise
            table.refresh()
    raise AssertionError("unreachable")  # pragma: no cover


def _key(table: Table, location: str) -> str:
    """A comparable name for a file, however its location is spelled."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    scheme, _, path = PyArrowFileIO.parse_location(location)
    return f"{'s3' if scheme in ('s3a', 's3n') else scheme}:{path}"


def referenced_files(table: Table, *, ignoring: set[int] | None = None) -> set[str]:
    """Keys (see :func:`_key`) of every file the table's metadata references.

    Metadata files (current and logged), manifest lists, manifests, data and delete
    files of every snapshot except those in ``ignoring``, statistics files and the
    version hint.
    """
    metadata = table.metadata
    locations = {table.metadata_location, f"{table.location().rstrip('/')}/metadata/{HINT_FILE}"}
    locations |= {entry.metadata_file for entry in metadata.metadata_log}
    locations |= {s.statistics_path for s in metadata.statistics}
    locations |= {s.statistics_path for s in metadata.partition_statistics}
    seen: set[str] = set()
    for snapshot in metadata.snapshots:
        if ignoring and snapshot.snapshot_id in ignoring:
            continue
        locations.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            locations.add(manifest.manifest_path)
            # A DELETED entry names a file its snapshot removed: only an older snapshot
            # needs it, and that one lists it itself while it is retained.
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                locations.add(entry.data_file.file_path)
    return {_key(table, location) for location in locations}


def find_orphans(
    table: Table, *, older_than: datetime, ignoring: set[int] | None = None
) -> list[Orphan]:
    """Unreferenced files under ``data/`` and ``metadata/`` last modified before ``older_than``.

    Only those two folders are looked at: anything else under the table's location is
    not pyiceberg's, nor ours to remove.
    """
    from pyarrow.fs import FileSelector, FileType
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if not isinstance(table.io, PyArrowFileIO):
        raise ConfigError(
            f"orphan removal lists files through pyarrow; the table's file IO is "
            f"{type(table.io).__name__}: set py-io-impl to pyiceberg.io.pyarrow.PyArrowFileIO"
        )
    referenced = referenced_files(table, ignoring=ignoring)
    scheme, netloc, root = PyArrowFileIO.parse_location(table.location())
    filesystem = table.io.fs_by_scheme(scheme, netloc)
    scheme = "s3" if scheme in ("s3a", "s3n") else scheme
    orphans = []
    for folder in ("data", "metadata"):
        selector = FileSelector(
            f"{root.rstrip('/')}/{folder}", recursive=True, allow_not_found=True
        )
        for info in filesystem.get_file_info(selector):
            if info.type != FileType.File or f"{scheme}:{info.path}" in referenced:
                continue
            modified = info.mtime
            if modified is None:
                continue  # an unknown age is never old enough
            if modified.tzinfo is None:
                modified = modified.replace(tzinfo=UTC)
            if modified < older_than:
                location = info.path if scheme == "file" else f"{scheme}://{info.path}"
                orphans.append(Orphan(path=location, size=info.size or 0, modified=modified))
    return sorted(orphans, key=lambda o: o.path)


def remove_files(table: Table, paths: Iterable[str]) -> None:
    """Delete ``paths`` through the table's file IO; a file already gone is fine."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            table.io.delete(path)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")  # pragma: no cover


def render(reports: Sequence[TableReport], *, dry_run: bool) -> str:
    """The human report: per table, what was (or would be) compacted, expired, removed."""
    if not reports:
        return "No Iceberg tables found: nothing to maintain."
    verb = "would " if dry_run else ""
    lines = ["Dry run: nothing was changed." if dry_run else "Maintenance done."]
    for report in reports:
        done = [c for c in report.compactions if not c.status.startswith("skipped")]
        skipped = [c for c in report.compactions if c.status.startswith("skipped")]
        lines += [
            "",
            f"{report.table}:",
            f"  compaction: {verb}rewrite {sum(len(c.inputs) for c in done)} small files "
            f"({_size(sum(c.input_bytes for c in done))}) into {len(done)}",
        ]
        lines += [f"    skipped {c.day.isoformat()}: {c.status[9:]}" for c in skipped]
        lines.append(f"  snapshots: {verb}expire {len(report.expired)}")
        lines.append(
            f"  orphan files: {verb}remove {len(report.orphans)} "
            f"({_size(sum(o.size for o in report.orphans))})"
        )
    return "\n".join(lines)
