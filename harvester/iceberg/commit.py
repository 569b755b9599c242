"""One atomic commit that replaces the records of a group of windows.

:func:`commit_windows` is what a group commit calls once the group's data files are
written (one UTC day each, holding only records of the group's windows) and uploaded to
their final place under the table's location. In one transaction, and one snapshot, it

* removes every data file whose records all lie in the windows (by the file's
  ``timestamp`` bounds in the manifest: no read),
* rewrites every other file that may hold records of the windows without them, streaming
  its row groups into a new file (memory: one record batch), and drops the old one, and
* adds the given files,

with the run id, the windows and the query fingerprint in the snapshot summary. So
the table afterwards holds exactly the given files' records for ``start <= timestamp <
end`` of every window, and is unchanged elsewhere. Replaying the same windows (after a
crash between the commit and our manifest, or with ``--force``) replaces them again:
never a duplicate.

Concurrent shards commit to one table at once. pyiceberg retries a lost race itself
(rebuilding the snapshot on the new head, after checking that no concurrent commit
added files that may hold records of these windows, nor removed a file we remove); when
it gives up, or that check fails, we refresh the table and redo the whole plan, up to
``max_attempts`` times, then raise :class:`~harvester.errors.CommitConflict`. Files we
rewrote for an attempt that did not land are deleted; the caller's files never are.

Everything here blocks: call it in a worker thread from async code.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from harvester.errors import CatalogError, CommitConflict
from harvester.iceberg.hint import publish_hint_quietly
from harvester.iceberg.tables import (
    READ_BATCH_ROWS,
    DataFileWriter,
    catalog_errors,
    data_file_path,
)
from harvester.windows import format_api

if TYPE_CHECKING:
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

log = structlog.get_logger("harvester.iceberg")

DEFAULT_ATTEMPTS = 8
"""Whole-plan attempts; each commit inside also gets pyiceberg's own retries (4)."""
MAX_SUMMARY_CHARS = 8192
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Range = tuple[int, int]
"""A half-open range of epoch microseconds ``[start, end)``."""
WindowLike = Any  # a (start, end) pair of aware datetimes, or a harvester.windows.Window


@dataclass(frozen=True, kw_only=True)
class CommitInfo:
    """The snapshot a commit made, as the manifest records it, and what it changed."""

    snapshot_id: int
    sequence_number: int
    attempts: int = 1
    files_added: int = 0
    files_removed: int = 0
    files_rewritten: int = 0

    def __post_init__(self) -> None:
        if self.attempts < 1 or min(self.files_added, self.files_removed) < 0:
            raise ValueError("attempts must be >= 1 and file counts >= 0")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one attempt changes: files dropped whole, and files to check and rewrite."""

    drop: tuple[DataFile, ...] = ()
    rewrite: tuple[DataFile, ...] = ()


@dataclass(kw_only=True)
class _Rewritten:
    removed: list[DataFile] = field(default_factory=list)
    added: list[DataFile] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def micros(instant: datetime) -> int:
    """Epoch microseconds of an aware datetime, exactly."""
    if instant.tzinfo is None:
        raise ValueError(f"window bound {instant} has no time zone")
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _bounds(window: WindowLike) -> tuple[datetime, datetime]:
    start, end = (window.start, window.end) if hasattr(window, "start") else window
    if not start < end:
        raise ValueError(f"empty window [{start}, {end})")
    return start, end


def window_ranges(windows: Iterable[WindowLike]) -> list[Range]:
    """The windows as sorted, disjoint microsecond ranges; touching windows are merged.

    Merging changes nothing (windows are half-open) but keeps the delete filter and
    the snapshot summary small when a group holds many contiguous windows.
    """
    ranges = sorted((micros(s), micros(e)) for s, e in map(_bounds, windows))
    merged: list[Range] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def window_filter(ranges: Sequence[Range]) -> BooleanExpression:
    """``start <= timestamp < end`` for any of ``ranges``, as a balanced OR tree.

    Balanced so pyiceberg's recursive evaluators stay shallow with hundreds of ranges.
    """
    from pyiceberg.expressions import AlwaysFalse, And, GreaterThanOrEqual, LessThan, Or

    # pydantic's synthesized __init__ hides the (term, literal) one from mypy
    at_least: Any = GreaterThanOrEqual
    below: Any = LessThan

    def one(r: Range) -> BooleanExpression:
        low, high = (_iso(v) for v in r)
        return And(at_least("timestamp", low), below("timestamp", high))

    def tree(items: Sequence[Range]) -> BooleanExpression:
        if not items:
            return AlwaysFalse()
        if len(items) == 1:
            return one(items[0])
        middle = len(items) // 2
        return Or(tree(items[:middle]), tree(items[middle:]))

    return tree(list(ranges))


def _iso(value: int) -> str:
    return (EPOCH + timedelta(microseconds=value)).isoformat()


def summary_properties(
    *, run_id: str, windows: Iterable[WindowLike], fingerprint: str
) -> dict[str, str]:
    """The snapshot summary entries of a group commit (keys ``harvester.*``).

    ``harvester.windows`` lists the merged ranges as ``START/END`` in API form, ``,``
    between them; past :data:`MAX_SUMMARY_CHARS` it is cut and
    ``harvester.windows-sha256`` (of the full list) identifies it.
    """
    windows = list(windows)
    text = ",".join(
        f"{format_api(EPOCH + timedelta(microseconds=s))}/"
        f"{format_api(EPOCH + timedelta(microseconds=e))}"
        for s, e in window_ranges(windows)
    )
    out = {
        "harvester.run-id": run_id,
        "harvester.fingerprint": fingerprint,
        "harvester.window-count": str(len(windows)),
        "harvester.windows": text,
    }
    if len(text) > MAX_SUMMARY_CHARS:
        out["harvester.windows"] = text[:MAX_SUMMARY_CHARS].rsplit(",", 1)[0] + ",..."
        out["harvester.windows-sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return out


def commit_windows(
    table: Table,
    *,
    windows: Sequence[WindowLike],
    files: Sequence[str],
    properties: Mapping[str, str],
    max_attempts: int = DEFAULT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> CommitInfo | None:
    """Replace the records of ``windows`` by those of ``files``, in one atomic commit.

    ``files`` are full paths under the table's location (one UTC day each, only records
    of ``windows``, never empty, never referenced before). Returns the new snapshot, or
    None when there was nothing to change (no file to add, no record to remove): then no
    snapshot is made. ``table`` is refreshed and left at the table's new state.

    Raises :class:`~harvester.errors.CommitConflict` after ``max_attempts`` conflicting
    attempts, :class:`~harvester.errors.CatalogError` or
    :class:`~harvester.errors.StorageError` when the catalog or the files fail, and
    ``ValueError`` for files that break the contract above (a bug in the caller).
    """
    from pyiceberg.exceptions import (
        CommitFailedException,
        CommitStateUnknownException,
        ValidationException,
    )
    from sqlalchemy.exc import OperationalError

    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if len(set(files)) != len(files):
        raise ValueError("the same file is given twice")
    ranges = window_ranges(windows)
    if not ranges:
        raise ValueError("no windows to commit")
    name = ".".join(table.name())
    with catalog_errors(f"table {name}"):
        table.refresh()
        added = [_data_file(table, path, ranges) for path in files]
    unknown = (CommitStateUnknownException, OperationalError)
    for attempt in range(1, max_attempts + 1):
        rewritten = _Rewritten()
        snapshot_id: int | None = None
        try:
            with catalog_errors(f"table {name}"):
                if attempt > 1:
                    table.refresh()
                plan = plan_replacement(table, ranges)
                for data_file in plan.rewrite:
                    _rewrite(table, data_file, ranges, rewritten)
            removed = [*plan.drop, *rewritten.removed]
            if not added and not removed:
                return None
            with catalog_errors(f"table {name}", passthrough=unknown):
                transaction = table.transaction()
                with transaction.update_snapshot(
                    snapshot_properties=dict(properties)
                ).overwrite() as producer:
                    snapshot_id = producer.snapshot_id
                    # The predicate makes pyiceberg's retry refuse a concurrent commit
                    # that added files which may hold records of these windows.
                    producer.delete_by_predicate(window_filter(ranges))
                    for data_file in removed:
                        producer.delete_data_file(data_file)
                    for data_file in [*added, *rewritten.added]:
                        producer.append_data_file(data_file)
                transaction.commit_transaction()
        except (CommitFailedException, ValidationException) as exc:
            # Both guarantee the commit did not land: what we rewrote is nobody's.
            _delete_quietly(table, rewritten.written)
            _conflict(name, attempt, max_attempts, exc, sleep)
            continue
        except unknown as exc:
            # The outcome is unknown (a lost reply, a locked SQLite file): our snapshot
            # id tells. Files we rewrote stay, for orphan removal, if it did not land.
            if snapshot_id is not None and _landed(table, snapshot_id):
                return _info(table, snapshot_id, attempt, added, removed, rewritten)
            _conflict(name, attempt, max_attempts, exc, sleep)
            continue
        except BaseException:
            _delete_quietly(table, rewritten.written)
            raise
        assert snapshot_id is not None
        return _info(table, snapshot_id, attempt, added, removed, rewritten)
    raise AssertionError("unreachable")  # pragma: no cover


def _info(
    table: Table,
    snapshot_id: int,
    attempt: int,
    added: list[DataFile],
    removed: list[DataFile],
    rewritten: _Rewritten,
) -> CommitInfo:
    snapshot = table.metadata.snapshot_by_id(snapshot_id)
    if snapshot is None or snapshot.sequence_number is None:
        raise CatalogError(f"snapshot {snapshot_id} is missing after its commit")
    publish_hint_quietly(table)
    info = CommitInfo(
        snapshot_id=snapshot_id,
        sequence_number=snapshot.sequence_number,
        attempts=attempt,
        files_added=len(added) + len(rewritten.added),
        files_removed=len(removed),
        files_rewritten=len(rewritten.removed),
    )
    log.info(
        "iceberg.commit",
        table=".".join(table.name()),
        snapshot=snapshot_id,
        sequence=info.sequence_number,
        attempts=attempt,
        added=info.files_added,
        removed=info.files_removed,
        rewritten=info.files_rewritten,
    )
    return info


def _landed(table: Table, snapshot_id: int) -> bool:
    with catalog_errors(f"table {'.'.join(table.name())}"):
        table.refresh()
    return table.metadata.snapshot_by_id(snapshot_id) is not None


def _conflict(
    name: str, attempt: int, attempts: int, exc: Exception, sleep: Callable[[float], None]
) -> None:
    log.info("iceberg.commit_conflict", table=name, attempt=attempt, error=str(exc))
    if attempt >= attempts:
        raise CommitConflict(
            f"table {name}: the commit conflicted with concurrent writers {attempts} times "
            f"({exc}); nothing was committed, run the same command again"
        ) from exc
    # Exponential backoff with full jitter, so shards that collided spread out.
    sleep(random.uniform(0, min(5.0, 0.05 * 2**attempt)))


def _data_file(table: Table, path: str, ranges: Sequence[Range]) -> DataFile:
    """The DataFile of a given file, read from its footer, checked against the windows."""
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    data_file = parquet_file_to_data_file(table.io, table.metadata, path)
    if not path.startswith(table.location().rstrip("/") + "/"):
        raise ValueError(f"{path} is not under the table's location {table.location()}")
    if not data_file.record_count:
        raise ValueError(f"{path} holds no record; do not add empty files")
    low, high = file_stamp_bounds(table, data_file)
    if not (_inside(low, ranges) and _inside(high, ranges)):
        raise ValueError(f"{path} holds records outside the windows being committed")
    return data_file


def _inside(value: int, ranges: Sequence[Range]) -> bool:
    return any(start <= value < end for start, end in ranges)


def file_stamp_bounds(table: Table, data_file: DataFile) -> tuple[int, int]:
    """The smallest and largest ``timestamp`` of a file, in microseconds, from its stats."""
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import TimestamptzType

    field_id = table.schema().find_field("timestamp").field_id
    lower = (data_file.lower_bounds or {}).get(field_id)
    upper = (data_file.upper_bounds or {}).get(field_id)
    if lower is None or upper is None:
        raise CatalogError(f"{data_file.file_path} has no timestamp bounds in the manifest")
    return int(from_bytes(TimestamptzType(), lower)), int(from_bytes(TimestamptzType(), upper))


def plan_replacement(table: Table, ranges: Sequence[Range]) -> Plan:
    """The current files that hold, or may hold, records of ``ranges``.

    A file whose bounds lie within one range is dropped whole; any other file the
    scan planner cannot rule out is to be checked and rewritten.
    """
    drop: list[DataFile] = []
    rewrite: list[DataFile] = []
    for task in table.scan(row_filter=window_filter(ranges)).plan_files():
        if task.delete_files:
            raise CatalogError(
                f"table {'.'.join(table.name())} has row-level delete files "
                f"({task.file.file_path}); the harvester writes copy-on-write tables only"
            )
        low, high = file_stamp_bounds(table, task.file)
        if any(start <= low and high < end for start, end in ranges):
            drop.append(task.file)
        else:
            rewrite.append(task.file)
    return Plan(drop=tuple(drop), rewrite=tuple(rewrite))


def _mask(stamps: pa.ChunkedArray | pa.Array, ranges: Sequence[Range]) -> pa.Array:
    """True where a stamp lies in one of ``ranges`` (only those overlapping the batch)."""
    values = stamps.cast(pa.int64())
    bounds = pc.min_max(values)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    mask = pa.array([False] * len(values))
    if low is None:
        return mask
    for start, end in ranges:
        if start <= high and end > low:
            hit = pc.and_(pc.greater_equal(values, start), pc.less(values, end))
            mask = pc.or_(mask, hit)
    return mask


def _rewrite(table: Table, data_file: DataFile, ranges: Sequence[Range], into: _Rewritten) -> None:
    """Stream ``data_file`` without the records of ``ranges`` into a new file.

    Nothing to remove: the file stays as it is. Everything removed: it is dropped and no
    file is added. Memory: about one row group read and one being written.
    """
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    low, _ = file_stamp_bounds(table, data_file)
    feed = table.name()[-1]
    path = data_file_path(table.location(), day_of(low), prefix="rewrite")
    kept = removed = 0
    with table.io.new_input(data_file.file_path).open() as source:
        reader = pq.ParquetFile(source)
        into.written.append(path)
        with (
            table.io.new_output(path).create() as sink,
            DataFileWriter(sink, feed, schema=reader.schema_arrow) as writer,
        ):
            for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS):
                drop = _mask(batch.column("timestamp"), ranges)
                keep = batch.filter(pc.invert(drop))
                removed += batch.num_rows - keep.num_rows
                writer.write(keep)
            kept = writer.rows
    if not removed or not kept:
        _delete_quietly(table, [path])
        into.written.remove(path)
    if removed:
        into.removed.append(data_file)
    if removed and kept:
        into.added.append(parquet_file_to_data_file(table.io, table.metadata, path))


def _delete_quietly(table: Table, paths: Iterable[str]) -> None:
    for path in paths:
        try:
            table.io.delete(path)
        except OSError as exc:
            log.warning("iceberg.cleanup_failed", path=path, error=str(exc))


def day_of(value: int) -> date:
    """The UTC date of epoch microseconds ``value``."""
    return (EPOCH + timedelta(microseconds=value)).date()
