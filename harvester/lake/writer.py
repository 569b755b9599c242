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

from harvester.errors import (
    FATAL,
    Conflict,
    HarvesterError,
    StorageError,
    TransientStorageError,
    unwrap,
)
from harvester.intervals import Spans
from harvester.lake import days
from harvester.lake.byday import DayRows
from harvester.lake.layout import data_key, day_folder, day_start, is_legacy, main_key
from harvester.lake.spool import Spool
from harvester.manifest.model import FileRecord, WindowRecord
from harvester.schemas import FEEDS, Feed
from harvester.storage import ABSENT, Expect, ObjectInfo, Staged, Store

ROW_GROUP_ROWS = 128 * 1024
COMPRESSION = "zstd"
BUFFERED_ROWS = 50_000
"""Files of up to this many rows are encoded in memory and written in one call."""
DICTIONARY_ROWS = 2_000
"""Files of at least this many rows use dictionary encoding.

Measured on simulated feeds (zstd): below about 1,000 rows a dictionary makes the
file bigger and its encoding slower (each dictionary page is one more zstd call,
and zstd's per-call set-up dominates a tiny file: 0.33 against 0.49 ms for a day of
20 rows); from about 5,000 rows it makes the file smaller and faster to write (at
20,000 rows half the size), as sample ids and names repeat within a day.
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
    """The group's spooled rows; this day's are taken from it once."""
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

    def files_of(self, start: int, end: int) -> tuple[str, ...]:
        """The files holding rows of window ``[start, end)``."""
        return tuple(f.key for f in self.files if f.windows.clip(start, end))


PARALLEL_DAYS = 8
"""Days with files already (rewritten one by one) written at once."""


@dataclass(frozen=True, kw_only=True)
class _File:
    """A data file made in the staging folder, to be committed at ``key``."""

    key: str
    path: Path
    windows: Spans
    rows: int
    expect: Expect


@dataclass(frozen=True, kw_only=True)
class _Made:
    """A day whose files are staged, with what its result will say."""

    job: DayJob
    files: tuple[_File, ...]
    window_rows: Mapping[int, int]
    dropped: tuple[str, ...] = ()


ENCODERS = 2
"""Threads encoding files at once (for all feeds): pyarrow encodes without the GIL."""


class DayWriter:
    """Writes days of one lake; ``staging`` is a local folder for the files being made."""

    def __init__(self, store: Store, staging: Path, *, cap: int = days.FILE_ROWS) -> None:
        self.store = store
        self.staging = staging
        self.cap = cap
        self._encoders = asyncio.Semaphore(ENCODERS)

    async def write_days(self, jobs: Sequence[DayJob]) -> dict[date, DayResult | HarvesterError]:
        """Write several days of one feed; each day's answer is its result or its error.

        Fresh days are made as one group: their files are encoded in one thread and
        committed together (:meth:`~harvester.storage.Store.commit_many`: one
        durability barrier for the group, not one per file). Days with files are
        rewritten one by one, :data:`PARALLEL_DAYS` at once. A day that fails does not
        stop the others; a :data:`~harvester.errors.FATAL` error stops them all.
        """
        fresh = [job for job in jobs if not job.files]
        results: dict[date, DayResult | HarvesterError] = {}
        gate = asyncio.Semaphore(PARALLEL_DAYS)

        async def one(job: DayJob) -> None:
            async with gate:
                try:
                    results[job.day] = await self.write(job)
                except FATAL:
                    raise
                except HarvesterError as exc:
                    results[job.day] = exc

        async def group() -> None:
            results.update(await self._fresh_group(fresh))

        try:
            async with asyncio.TaskGroup() as tasks:
                if fresh:
                    tasks.create_task(group())
                for job in jobs:
                    if job.files:
                        tasks.create_task(one(job))
        except BaseExceptionGroup as errors:
            raise unwrap(errors) from None
        return {job.day: results[job.day] for job in jobs}

    async def write(self, job: DayJob) -> DayResult:
        """Write ``job``'s day; see the module docstring for the three cases."""
        if any(is_legacy(f.key) for f in job.files):
            return await self._consolidate(job)
        if not job.files:
            result = (await self._fresh_group([job]))[job.day]
            if isinstance(result, HarvesterError):
                raise result
            return result
        return await self._rewrite(job)

    # --- the three cases ---------------------------------------------------------------

    async def _fresh_group(self, jobs: Sequence[DayJob]) -> dict[date, DayResult | HarvesterError]:
        ordered = sorted(jobs, key=lambda j: j.day)
        size = -(-len(ordered) // ENCODERS)
        chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        tasks: list[asyncio.Task[list[_Made]]] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._make_chunk(c)) for c in chunks]
        except BaseExceptionGroup as errors:
            made = [m for t in tasks if t.done() and not t.exception() for m in t.result()]
            await asyncio.to_thread(_remove, made)
            error = unwrap(errors)
            if isinstance(error, HarvesterError) and not isinstance(error, FATAL):
                return {job.day: error for job in jobs}
            raise error from None
        return await self._commit([m for t in tasks for m in t.result()])

    async def _make_chunk(self, jobs: Sequence[DayJob]) -> list[_Made]:
        async with self._encoders:
            return await asyncio.to_thread(self._make_all, jobs)

    def _make_all(self, jobs: Sequence[DayJob]) -> list[_Made]:
        """Take each day's rows and stage its files (blocking; a whole group in one trip)."""
        made: list[_Made] = []
        try:
            for job in jobs:
                new, counts = job.rows.take(job.day, job.replaced & job.span)
                made.append(self._make(job, new, counts, expect_main=ABSENT))
        except BaseException:
            _remove(m for m in made)
            raise
        return made

    def _make(
        self,
        job: DayJob,
        new: pa.Table,
        counts: Mapping[int, int],
        *,
        expect_main: Expect,
        dropped: Iterable[str] = (),
    ) -> _Made:
        """Stage the files of a day written whole: ``new`` cut at windows, by the cap."""
        files: list[_File] = []
        groups = days.split_windows(dict(counts), job.step, cap=self.cap)
        try:
            for index, windows in enumerate(groups):
                first = windows.pairs[0][0]
                key = main_key(job.feed.name, job.day) if index == 0 else _key(job, first)
                part = new if len(groups) == 1 else days.select(new, windows)
                path = self._staged(job, key)
                _write_parquet(path, part, job.feed.schema)
                files.append(
                    _File(
                        key=key,
                        path=path,
                        windows=windows,
                        rows=part.num_rows,
                        expect=expect_main if index == 0 else ABSENT,
                    )
                )
        except OSError as exc:
            _remove([_Made(job=job, files=tuple(files), window_rows={})])
            raise self.store.staging_error(exc, self.staging) from exc
        keys = {f.key for f in files}
        return _Made(
            job=job,
            files=tuple(files),
            window_rows={s: n for s, n in counts.items() if job.replaced.containing(s)},
            dropped=tuple(k for k in dropped if k not in keys),
        )

    async def _commit(self, made: Sequence[_Made]) -> dict[date, DayResult | HarvesterError]:
        """Commit staged days together; settle each file whose condition failed."""
        results: dict[date, DayResult | HarvesterError] = {}
        try:
            staged = [
                Staged(path=f.path, key=f.key, expect=f.expect) for m in made for f in m.files
            ]
            answers = iter(await self.store.commit_many(staged))
            for day in made:
                records: list[FileRecord] = []
                try:
                    for file in day.files:
                        info = next(answers)
                        if not isinstance(info, ObjectInfo):
                            # Lost a race, or only the answer (the store's retries ran
                            # out): look.
                            info = await self._settle(day.job, file.key, file.path, file.expect)
                        records.append(_record(day.job, file, info))
                except FATAL:
                    raise
                except HarvesterError as exc:
                    results[day.job.day] = exc
                    for _ in day.files[len(records) + 1 :]:
                        next(answers)
                    continue
                results[day.job.day] = DayResult(
                    files=tuple(records),
                    dropped=day.dropped,
                    window_rows=day.window_rows,
                    written=len(records),
                )
        finally:
            await asyncio.to_thread(_remove, made)
        return results

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
            if record is not None and days.same_rows(old_part, new_part):
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
        window_rows = {s: n for s, n in counts.items() if job.replaced.containing(s)}
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

            def make() -> _Made:
                new, _ = job.rows.take(job.day, job.replaced & job.span)
                new = days.concat([new, days.select(kept.read(), job.span)], job.feed.schema)
                return self._make(
                    job,
                    new,
                    days.window_counts(new, job.step),
                    expect_main=expect_main,
                    dropped=[f.key for f in job.files],
                )

            made = await asyncio.to_thread(make)
            result = (await self._commit([made]))[job.day]
        finally:
            kept.discard()
        if isinstance(result, HarvesterError):
            raise result
        return result

    # --- files -------------------------------------------------------------------------

    def _staged(self, job: DayJob, key: str) -> Path:
        return self.staging / f"{job.feed.name}-{key.rsplit('/', 1)[-1]}"

    async def _put(
        self, job: DayJob, key: str, table: pa.Table, windows: Spans, expect: Expect
    ) -> FileRecord:
        staged = self._staged(job, key)
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

    async def _settle(self, job: DayJob, key: str, staged: Path, expect: Expect) -> ObjectInfo:
        """After a conditional write failed: adopt files nobody recorded, or give up.

        A file the manifest does not know was left by a run that died before recording
        it: it holds no recorded window, so it is replaced (and any other such file of
        the day removed). A write of ours whose answer was lost looks the same, and is
        recognised by its content.
        """
        listed = {i.key: i for i in await self.store.list(day_folder(job.feed.name, job.day))}
        recorded = {f.key for f in job.files}
        found = listed.get(key)
        if found is not None and _is_ours(found, staged):
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
        return await self.store.commit(staged, key, expect=found.version)

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


def _record(job: DayJob, file: _File, info: ObjectInfo) -> FileRecord:
    return FileRecord(
        key=file.key,
        day=job.day.isoformat(),
        size=info.size,
        version=info.version,
        rows=file.rows,
        windows=file.windows,
    )


def _remove(made: Iterable[_Made]) -> None:
    """Delete staged files still there (committed ones were renamed away)."""
    for day in made:
        for file in day.files:
            with contextlib.suppress(OSError):
                file.path.unlink(missing_ok=True)


def _write_parquet(path: Path, table: pa.Table, schema: pa.Schema) -> None:
    """Write ``table`` as one zstd Parquet file (the store makes it durable when committed).

    A small file is encoded in memory and written with one call; a big one is streamed.
    """
    if table.schema != schema:
        table = table.cast(schema)
    options = {"compression": COMPRESSION, "use_dictionary": table.num_rows >= DICTIONARY_ROWS}
    if table.num_rows > BUFFERED_ROWS:
        with pq.ParquetWriter(path, schema, **options) as writer:
            writer.write_table(table, ROW_GROUP_ROWS)
        return
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, **options) as writer:
        writer.write_table(table, ROW_GROUP_ROWS)
    with open(path, "wb") as handle:
        handle.write(sink.getvalue())


def _read_parquet(path: Path, key: str) -> pa.Table:
    try:
        # One file, read as itself: no partition columns guessed from its folder.
        return pq.read_table(path, partitioning=None)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read {key} ({exc}); run `harvester verify`") from exc


def _is_ours(found: ObjectInfo, staged: Path) -> bool:
    """Whether ``found`` is the staged file: its size, and (S3) its MD5 ETag."""
    if not staged.exists() or found.size != staged.stat().st_size:
        return False
    digest = hashlib.md5(staged.read_bytes(), usedforsecurity=False).hexdigest()
    return found.version.strip('"') == digest
