"""Writing one (feed, day) of the Hive layout: its files, whole, by compare-and-set.

A day's data files hold whole windows; each window lives in exactly one file. Writing a
day replaces exactly the windows harvested again (``replaced``) and keeps every other
row of the day as it was:

* **A fresh day** (no file yet): the rows of the spools are cut at window boundaries into
  files of at most :data:`~harvester.lake.days.FILE_ROWS` rows; the main file (named
  after midnight) is written first, each file on condition that it does not exist.
* **A day with files**: each file holding a replaced window is rewritten in place,
  keeping its other windows, on condition that it is still the version the manifest
  recorded (``If-Match`` on S3, a lock and a version check on local disk). A replaced
  window no file holds joins the main file. A file whose windows brought back exactly
  the rows it holds is left alone, so a re-harvest that finds nothing new writes
  nothing.
* **A day of a version 1 lake** (one file per window): its rows are copied aside, the old
  files are deleted, and one main file is written. The caller has first marked those
  windows incomplete in the manifest (the old files stay recorded until the new one
  is), so a crash in between means they are harvested again and the day folded again;
  a recorded old file that is gone by then was deleted by the crashed run, and holds
  nothing complete. A reader may briefly miss that day's rows, never see them twice.

A file the manifest does not know (left by a run killed after writing it and before
recording it) is found when a write on condition "absent" fails: the folder is listed,
and such files are replaced or removed, so the day ends with exactly its recorded files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import Conflict, HarvesterError, StorageError, TransientStorageError
from harvester.intervals import Spans
from harvester.lake import days
from harvester.lake.byday import DayRows
from harvester.lake.layout import data_key, day_folder, day_start, is_legacy, main_key
from harvester.lake.spool import Spool
from harvester.manifest.model import FileRecord, WindowRecord
from harvester.schemas import FEEDS, Feed
from harvester.storage import ABSENT, Expect, ObjectInfo, Store

ROW_GROUP_ROWS = 128 * 1024
COMPRESSION = "zstd"
SMALL_COMPRESSION = "snappy"
SMALL_ROWS = 2_000
"""Files of fewer rows are *small*: snappy instead of zstd, and no dictionary encoding.

A sparse day's file holds tens of rows, and its cost is set-up, not compression. zstd
sets up a context for every column chunk: on the simulated feeds a 20-row file took
0.28 ms with zstd against 0.11 ms with snappy (4.0 against 4.6 KB), a 200-row file 0.37
against 0.16 ms (12 against 19 KB). A dictionary page is one more compression call and
makes such a file bigger (0.76 against 0.57 ms for a day of 24 rows). From some
thousands of rows zstd and dictionaries pay: sample ids and names repeat within a day.
"""

@dataclass(frozen=True, kw_only=True)
class DayJob:
    """What to write for one (feed, day)."""

    feed: Feed
    day: date
    step: int
    """The window size in seconds."""
    replaced: Spans
    """The day's windows harvested in this commit: their rows are in ``rows``."""
    rows: DayRows
    """The commit's spooled rows, split by day; this day's are taken from it once."""
    files: Sequence[FileRecord] = ()
    """The day's files as the manifest records them."""
    previous: Mapping[int, WindowRecord] = field(default_factory=dict)
    """The manifest's records of the day's windows before this commit."""

    @property
    def span(self) -> Spans:
        """The day, as an interval of epoch seconds."""
        start = day_start(self.day)
        return Spans.one(start, start + days.DAY)


@dataclass(frozen=True, kw_only=True)
class DayResult:
    """What a day looks like after it was written."""

    files: tuple[FileRecord, ...]
    """Every data file of the day afterwards (written or left alone)."""
    dropped: tuple[str, ...] = ()
    """Keys the day no longer has."""
    window_rows: Mapping[int, int] = field(default_factory=dict)
    """Rows per replaced window (by start)."""
    unchanged: frozenset[int] = frozenset()
    """Replaced windows whose rows are exactly what the lake already held."""
    late: int = 0
    """Rows the replaced windows gained over what the lake held."""
    written: int = 0
    """Files written."""


class DayWriter:
    """Writes days of one lake; ``staging`` is a local folder for the files being made."""

    def __init__(self, store: Store, staging: Path, *, cap: int = days.FILE_ROWS) -> None:
        self.store = store
        self.staging = staging
        self.cap = cap

    async def write(self, job: DayJob) -> DayResult:
        """Write ``job``'s day; see the module docstring for the three cases."""
        if any(is_legacy(f.key) for f in job.files):
            return await self._consolidate(job)
        if not job.files:
            return await self._fresh(job, kept=None, expect_main=ABSENT)
        return await self._rewrite(job)

    async def write_fresh(self, jobs: Sequence[DayJob]) -> list[DayResult | HarvesterError]:
        """Write small days that have no file yet, in two thread trips for all of them.

        Each day gets the files :meth:`write` makes of it, on the same conditions; per
        day, its result or its error (the other days are written). The days' rows are
        cut and encoded in memory in one trip, and the store writes them all in one
        more (:meth:`~harvester.storage.Store.write_many`): on a sparse range most days
        are such small days, and one trip each for rows, encoding and commit, and a
        staged file each, cost more than the files themselves. The caller keeps the
        days small (their files are held in memory together).
        """
        encoded = await asyncio.to_thread(_encode_fresh, jobs, self.cap)
        items = [(f.key, f.data, ABSENT) for day in encoded for f in day.files]
        outcomes = iter(await self.store.write_many(items))
        results: list[DayResult | HarvesterError] = []
        for job, day in zip(jobs, encoded, strict=True):
            records: list[FileRecord] = []
            error: HarvesterError | None = None
            for file in day.files:
                info: ObjectInfo | HarvesterError = next(outcomes)
                if isinstance(info, Conflict | TransientStorageError) and error is None:
                    try:  # lost a race, or only the answer: look, as _put does
                        info = await self._settle(job, file.key, file.data, ABSENT)
                    except HarvesterError as exc:
                        info = exc
                if isinstance(info, HarvesterError):
                    error = error or info
                else:
                    records.append(file.record(job, info))
            written = DayResult(
                files=tuple(records), window_rows=day.window_rows, written=len(records)
            )
            results.append(error if error is not None else written)
        return results

    # --- the three cases ---------------------------------------------------------------

    async def _fresh(
        self, job: DayJob, *, kept: Spool | None, expect_main: Expect, dropped: Iterable[str] = ()
    ) -> DayResult:
        # Rows, counts and (for more than one file) the cut all happen in a thread: on
        # a sparse range these small Arrow calls, one day after another, would
        # otherwise hold the event loop for most of the commit.
        new, counts = await asyncio.to_thread(_day_rows, job, kept)
        files = _cut(job, counts, self.cap)
        records: list[FileRecord] = []
        for index, (key, group) in enumerate(files):
            expect = expect_main if index == 0 else ABSENT
            part = new if len(files) == 1 else await asyncio.to_thread(days.select, new, group)
            records.append(await self._put(job, key, part, group, expect))
        return DayResult(
            files=tuple(records),
            dropped=tuple(k for k in dropped if k not in {r.key for r in records}),
            window_rows=_replaced_rows(job, counts),
            written=len(records),
        )

    async def _rewrite(self, job: DayJob) -> DayResult:
        files = {f.key: f for f in job.files}
        held = Spans()
        for known in job.files:
            held = held | known.windows
        targets = {key: record.windows & job.replaced for key, record in files.items()}
        loose = (job.replaced & job.span) - held
        main = main_key(job.feed.name, job.day)
        if loose:
            targets[main] = targets.get(main, Spans()) | loose
        new, counts = await asyncio.to_thread(job.rows.take, job.day, job.replaced & job.span)
        result_files: dict[str, FileRecord] = dict(files)
        dropped: list[str] = []
        unchanged: set[int] = set()
        late = written = 0
        for key, target in sorted(targets.items()):
            if not target:
                continue
            record: FileRecord | None = files.get(key)
            old, version = (
                await self._read(record) if record else (job.feed.schema.empty_table(), None)
            )
            old_part = days.select(old, target)
            new_part = days.select(new, target)
            redone = [s for s, _ in _windows(target, job.step) if s in job.previous]
            # Left alone only if it is still the version recorded: one a killed commit
            # rewrote (and never recorded) is written again, so the manifest records it.
            if (
                record is not None
                and version == record.version
                and days.same_rows(old_part, new_part)
            ):
                unchanged.update(redone)
                continue
            if redone:
                late += max(0, new_part.num_rows - old_part.num_rows)
            kept_part = days.select(old, Spans.one(0, 2**62) - target)
            table = days.concat([kept_part, new_part], job.feed.schema)
            windows = ((record.windows if record else Spans()) - target) | _present(
                new_part, job.step
            )
            if not table.num_rows:
                if version is not None:
                    await self.store.delete(key, expect=version)
                    dropped.append(key)
                    result_files.pop(key, None)
                continue
            # On condition of the version just read, not the one recorded: a file a
            # killed commit rewrote without recording it is read, and replaced, as it is.
            expect: Expect = version if version is not None else ABSENT
            result_files[key] = await self._put(job, key, table, windows, expect)
            written += 1
        window_rows = _replaced_rows(job, counts)
        return DayResult(
            files=tuple(sorted(result_files.values(), key=lambda f: f.key)),
            dropped=tuple(dropped),
            window_rows=window_rows,
            unchanged=frozenset(unchanged),
            late=late,
            written=written,
        )

    async def _consolidate(self, job: DayJob) -> DayResult:
        # Copy every row the day keeps aside first: the old files are deleted before the
        # new main file appears (a reader may miss the day for a moment, never see it
        # twice), and on local disk the old file *is* the copy we would read.
        kept = Spool(self.staging / f"kept-{job.feed.name}-{job.day}.arrow", job.feed.schema)
        try:
            versions = {}
            for record in job.files:
                read = await self._read_if_there(record)
                if read is None and not _unclaimed(record, job):
                    raise self._missing(record)
                if read is None:
                    continue  # deleted by a fold that was killed: nothing of it is complete
                table, versions[record.key] = read
                kept.append(days.select(table, Spans.one(0, 2**62) - job.replaced))
            kept.close()
            main = main_key(job.feed.name, job.day)
            expect_main: Expect = ABSENT
            for record in job.files:
                if record.key == main:
                    expect_main = versions[record.key]
                elif record.key in versions:
                    await self.store.delete(record.key, expect=versions[record.key])
            result = await self._fresh(
                job, kept=kept, expect_main=expect_main, dropped=[f.key for f in job.files]
            )
        finally:
            kept.discard()
        return result

    # --- files -------------------------------------------------------------------------

    async def _put(
        self, job: DayJob, key: str, table: pa.Table, windows: Spans, expect: Expect
    ) -> FileRecord:
        staged = self.staging / f"{job.feed.name}-{key.rsplit('/', 1)[-1]}"
        try:
            await asyncio.to_thread(_write_parquet, staged, table, job.feed.schema)
        except OSError as exc:
            raise self.store.staging_error(exc, staged) from exc
        try:
            try:
                info = await self.store.commit(staged, key, expect=expect)
            except (Conflict, TransientStorageError):
                # Lost a race, or only the answer (the store's retries ran out): look.
                info = await self._settle(job, key, staged, expect)
        finally:
            staged.unlink(missing_ok=True)
        return FileRecord(
            key=key,
            day=job.day.isoformat(),
            size=info.size,
            version=info.version,
            rows=table.num_rows,
            windows=windows,
        )

    async def _settle(
        self, job: DayJob, key: str, content: Path | bytes, expect: Expect
    ) -> ObjectInfo:
        """After a conditional write failed: adopt files nobody recorded, or give up.

        ``content`` is what was written: a staged file, or a small file's bytes.

        A file the manifest does not know was left by a run that died before recording
        it: it holds no recorded window, so it is replaced (and any other such file of
        the day removed). A write of ours whose answer was lost looks the same, and is
        recognised by its content.
        """
        listed = {i.key: i for i in await self.store.list(day_folder(job.feed.name, job.day))}
        recorded = {f.key for f in job.files}
        found = listed.get(key)
        if found is not None and _is_ours(found, content):
            return found
        if expect is not ABSENT or found is None or key in recorded:
            raise Conflict(
                f"{self.store.url(key)} changed while this run was writing it; another run "
                "wrote the same day: run the same command again"
            )
        for other in listed.values():
            if other.key not in recorded and other.key != key and other.key.endswith(".parquet"):
                with contextlib.suppress(Conflict):
                    await self.store.delete(other.key, expect=other.version)
        if isinstance(content, bytes):
            return await self.store.write(key, content, expect=found.version)
        return await self.store.commit(content, key, expect=found.version)

    def _schema(self, record: FileRecord) -> pa.Schema:
        return FEEDS[record.key.split("/", 1)[0]].schema

    async def _read(self, record: FileRecord) -> tuple[pa.Table, str]:
        """A recorded file's rows and the version they were read at."""
        read = await self._read_if_there(record)
        if read is None:
            raise self._missing(record)
        return read

    def _missing(self, record: FileRecord) -> StorageError:
        return StorageError(
            f"{self.store.url(record.key)} is missing although the manifest records "
            "it; run `harvester verify --repair`"
        )

    async def _read_if_there(self, record: FileRecord) -> tuple[pa.Table, str] | None:
        """Like :meth:`_read`, but None when the file is gone."""
        async with self.store.fetch(record.key) as found:
            if found is None:
                return None
            path, info = found
            table = await asyncio.to_thread(_read_parquet, path, record.key)
            return table.cast(self._schema(record)), info.version


@dataclass(frozen=True, kw_only=True)
class _Encoded:
    """One file of a fresh day, encoded in memory and waiting to be written."""

    key: str
    data: bytes
    rows: int
    windows: Spans

    def record(self, job: DayJob, info: ObjectInfo) -> FileRecord:
        """The manifest's record of this file, written as ``info``."""
        return FileRecord(
            key=self.key,
            day=job.day.isoformat(),
            size=info.size,
            version=info.version,
            rows=self.rows,
            windows=self.windows,
        )


@dataclass(frozen=True, kw_only=True)
class _EncodedDay:
    """A fresh day's files, encoded, and its rows per replaced window."""

    files: tuple[_Encoded, ...]
    window_rows: Mapping[int, int]


def _encode_fresh(jobs: Sequence[DayJob], cap: int) -> list[_EncodedDay]:
    """Each fresh day's files as Parquet bytes, cut as :meth:`DayWriter._fresh` cuts them.

    Blocking: one thread trip for all the days.
    """
    encoded: list[_EncodedDay] = []
    for job in jobs:
        new, counts = job.rows.take(job.day, job.replaced & job.span)
        cut = _cut(job, counts, cap)
        files = []
        for key, group in cut:
            part = new if len(cut) == 1 else days.select(new, group)
            data = _parquet_bytes(part, job.feed.schema)
            files.append(_Encoded(key=key, data=data, rows=part.num_rows, windows=group))
        encoded.append(_EncodedDay(files=tuple(files), window_rows=_replaced_rows(job, counts)))
    return encoded


def _cut(job: DayJob, counts: Mapping[int, int], cap: int) -> list[tuple[str, Spans]]:
    """A fresh day's files: each one's key and windows, the main file first (pure)."""
    groups = days.split_windows(dict(counts), job.step, cap=cap)
    return [
        (main_key(job.feed.name, job.day) if index == 0 else _key(job, group.pairs[0][0]), group)
        for index, group in enumerate(groups)
    ]


def _replaced_rows(job: DayJob, counts: Mapping[int, int]) -> dict[int, int]:
    """Rows per window of the day that this commit harvested again."""
    return {s: n for s, n in counts.items() if job.replaced.containing(s)}


def _unclaimed(record: FileRecord, job: DayJob) -> bool:
    """True for a version 1 file none of whose windows the manifest holds complete.

    Such a file was marked for folding by a run that may have deleted it before it was
    killed; if it is gone, nothing recorded is lost.
    """
    return is_legacy(record.key) and not any(
        s in job.previous for s, _ in _windows(record.windows, job.step)
    )


def _key(job: DayJob, first: int) -> str:
    return data_key(job.feed.name, job.day, first)


def _windows(spans: Spans, step: int) -> Iterator[tuple[int, int]]:
    for start, end in spans:
        for s in range(start, end, step):
            yield s, s + step


def _present(table: pa.Table, step: int) -> Spans:
    return Spans.of((s, s + step) for s in days.window_counts(table, step))


def _day_rows(job: DayJob, kept: Spool | None) -> tuple[pa.Table, dict[int, int]]:
    """The day's new rows, with the rows ``kept`` holds, and rows per window (blocking)."""
    new, counts = job.rows.take(job.day, job.replaced & job.span)
    if kept is None or not kept.rows:
        return new, counts
    table = days.concat([new, days.select(kept.read(), job.span)], job.feed.schema)
    return table, days.window_counts(table, job.step)


def _write_parquet(path: Path, table: pa.Table, schema: pa.Schema) -> None:
    """Write ``table`` as one Parquet file (the store makes it durable on commit)."""
    # An open file, not a path: pyarrow resolves a path's file system on every call,
    # which cost a small file more than encoding it.
    with pa.OSFile(str(path), "wb") as sink:
        _encode(sink, table, schema)


def _parquet_bytes(table: pa.Table, schema: pa.Schema) -> bytes:
    """``table`` as the bytes of one Parquet file (for small files)."""
    sink = pa.BufferOutputStream()
    _encode(sink, table, schema)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def _encode(sink: pa.NativeFile, table: pa.Table, schema: pa.Schema) -> None:
    if table.schema != schema:
        table = table.cast(schema)
    small = table.num_rows < SMALL_ROWS
    codec = SMALL_COMPRESSION if small else COMPRESSION
    with pq.ParquetWriter(sink, schema, compression=codec, use_dictionary=not small) as w:
        w.write_table(table, ROW_GROUP_ROWS)


def _read_parquet(path: Path, key: str) -> pa.Table:
    try:
        # One file, read as itself: no partition columns guessed from its folder.
        return pq.read_table(path, partitioning=None)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read {key} ({exc}); run `harvester verify`") from exc


def _is_ours(found: ObjectInfo, content: Path | bytes) -> bool:
    """Whether ``found`` is what was written: its size, and (S3) its MD5 ETag."""
    if isinstance(content, Path):
        if not content.exists():
            return False
        content = content.read_bytes()
    if found.size != len(content):
        return False
    digest = hashlib.md5(content, usedforsecurity=False).hexdigest()
    return found.version.strip('"') == digest
