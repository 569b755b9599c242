"""``harvester export``: the indicator table as STIX 2.1, a MISP feed, CSV or a blocklist.

Rows are read a batch at a time from each type's table (a local file, or a download
from S3 to local disk), filtered (:mod:`~harvester.intel.filters`) and handed to the
format's writer, so memory does not grow with the export. Types follow ``--types``
in :data:`~harvester.intel.schema.TYPES` order, values in sorted order: the same lake
and options give the same bytes.

Writing is atomic. A file (``stix21``, ``csv``, ``txt``) is written to a staging path
and renamed into place, or uploaded whole to S3. A MISP feed folder gets its event
files and ``hashes.csv`` first, each atomically, then ``manifest.json``: a subscriber
never sees the manifest name an event that is not there yet. Event files an earlier
export wrote and this one does not are removed after the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from harvester.errors import ConfigError, StorageError
from harvester.intel import misp
from harvester.intel.build import table_types
from harvester.intel.engine import Engine
from harvester.intel.filters import DEFAULT_TLP, ExportFilter, parse_tlp
from harvester.intel.resources import DEFAULT_MEMORY_LIMIT, check_memory_limit
from harvester.intel.schema import STATE_KEY, Indicator, table_key
from harvester.intel.stix import BundleWriter
from harvester.intel.tabular import CsvWriter, TxtWriter
from harvester.storage import LocalStore, Store, open_store

log = structlog.get_logger("harvester")

FORMATS = ("stix21", "misp", "csv", "txt")
EXTENSIONS = {"stix21": "json", "csv": "csv", "txt": "txt"}
BATCH_ROWS = 8192
_EVENT_FILE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json$")


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """One export: the format, where to, which rows, and its marking."""

    format: str
    to: str
    filter: ExportFilter = field(default_factory=ExportFilter)
    tlp: str = DEFAULT_TLP
    memory_limit: str = DEFAULT_MEMORY_LIMIT

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format!r} is unknown; use {', '.join(FORMATS)}")
        object.__setattr__(self, "tlp", parse_tlp(self.tlp))  # TLP 2.0's clear is white
        if not self.to.strip():
            raise ConfigError("--to is empty; name the file (or, for misp, the folder) to write")
        check_memory_limit(self.memory_limit)


@dataclass(kw_only=True)
class ExportSummary:
    """What an export wrote and what it left out, by type."""

    format: str
    to: str
    exported: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, Counter[str]] = field(default_factory=dict)
    files: int = 0

    def skip(self, kind: str, reason: str, count: int = 1) -> None:
        """Count ``count`` values of ``kind`` left out for ``reason``."""
        self.skipped.setdefault(kind, Counter())[reason] += count

    @property
    def total(self) -> int:
        """Indicators written."""
        return sum(self.exported.values())


class _Writer(Protocol):
    def add(self, ind: Indicator) -> str | None: ...

    def close(self) -> None: ...


async def export_indicators(
    lake: Store, options: ExportOptions, *, s3_endpoint_url: str | None = None
) -> ExportSummary:
    """Export ``lake``'s indicator table as ``options`` say; return the summary."""
    destination, key = open_destination(options, s3_endpoint_url=s3_endpoint_url)
    summary = ExportSummary(format=options.format, to=options.to)
    try:
        available = await table_types(lake)
        if not available and await lake.get_bytes(STATE_KEY) is None:
            raise ConfigError(
                f"{lake.url()} has no indicator table; build it first: "
                f"harvester indicators --out {lake.url()}"
            )
        async with contextlib.AsyncExitStack() as stack:
            tables = {}
            for kind in options.filter.types:
                if kind in available:
                    found = await stack.enter_async_context(lake.fetch(table_key(kind)))
                    path = None if found is None else found[0]
                    if path is not None:
                        tables[kind] = path
            if options.format == "misp":
                await _export_misp(destination, tables, options, summary)
            else:
                async with destination.staging(key) as staged:
                    await asyncio.to_thread(_write_file, staged, tables, options, summary)
                    await destination.commit(staged, key)
                summary.files = 1
    finally:
        await destination.close()
    log.info(
        "export.done",
        format=options.format,
        to=options.to,
        rows=summary.total,
        skipped={k: dict(v) for k, v in summary.skipped.items()},
    )
    return summary


def open_destination(
    options: ExportOptions, *, s3_endpoint_url: str | None = None
) -> tuple[Store, str]:
    """The store and key ``--to`` names: a folder for misp, a file for the others."""
    to = options.to.strip()
    if options.format == "misp":
        if not to.startswith("s3://") and Path(to).expanduser().is_file():
            raise ConfigError(f"--to {to} is a file; a MISP feed is a folder, name one")
        return open_store(to, s3_endpoint_url=s3_endpoint_url), ""
    example = f"indicators.{EXTENSIONS[options.format]}"
    if to.startswith("s3://"):
        parent, _, name = to.rstrip("/").rpartition("/")
        if to.endswith("/") or parent in ("s3:/", "s3:") or not name:
            raise ConfigError(f"--to {to} names no file; use e.g. {to.rstrip('/')}/{example}")
        return open_store(parent, s3_endpoint_url=s3_endpoint_url), name
    if "://" in to:
        raise ConfigError(f"--to {to!r} has an unknown scheme; use a path or s3://bucket/key")
    path = Path(to).expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"--to {to} is a folder; name the file to write, e.g. {path / example}")
    return LocalStore(path.parent), path.name


def read_indicators(
    tables: Mapping[str, Path], filt: ExportFilter, summary: ExportSummary
) -> Iterator[Indicator]:
    """The rows of each type's table that pass ``filt``, counting what it leaves out."""
    for kind in filt.types:
        path = tables.get(kind)
        if path is None:
            continue
        for batch in _batches(path, kind):
            mask = filt.mask(batch)
            if mask is not None:
                kept = batch.filter(mask)
                if batch.num_rows - kept.num_rows:
                    summary.skip(kind, "filtered", batch.num_rows - kept.num_rows)
                batch = kept
            for row in batch.to_pylist():
                reason = filt.reason(kind, row["value"])
                if reason is not None:
                    summary.skip(kind, reason)
                    continue
                yield Indicator(
                    type=kind,
                    value=row["value"],
                    first_seen=row["first_seen"],
                    last_seen=row["last_seen"],
                    sightings=row["sightings"],
                    samples=row["samples"],
                    max_severity=row["max_severity"],
                    max_confidence=row["max_confidence"],
                    iocs=tuple(row["iocs"]),
                    feeds=tuple(row["feeds"]),
                )


def _batches(path: Path, kind: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StorageError(
            f"the {kind} indicator table cannot be read ({exc}); rebuild it: "
            "harvester indicators --rebuild"
        ) from exc


def _open_writer(options: ExportOptions, handle: IO[bytes]) -> _Writer:
    if options.format == "stix21":
        return BundleWriter(handle, tlp=options.tlp)
    if options.format == "csv":
        return CsvWriter(handle)
    return TxtWriter(handle)


def _write_file(
    staged: Path, tables: Mapping[str, Path], options: ExportOptions, summary: ExportSummary
) -> None:
    """Write a one-file format to ``staged`` (blocking: runs in a thread)."""
    with open(staged, "wb") as handle:
        writer = _open_writer(options, handle)
        for ind in read_indicators(tables, options.filter, summary):
            reason = writer.add(ind)
            if reason is None:
                summary.exported[ind.type] += 1
            else:
                summary.skip(ind.type, reason)
        writer.close()


async def _export_misp(
    destination: Store, tables: Mapping[str, Path], options: ExportOptions, summary: ExportSummary
) -> None:
    with tempfile.TemporaryDirectory(prefix="harvester-misp-") as tmp:
        work = Path(tmp)
        rows = work / "rows.parquet"

        def counted() -> Iterator[Indicator]:
            for ind in read_indicators(tables, options.filter, summary):
                summary.exported[ind.type] += 1
                yield ind

        await asyncio.to_thread(misp.stage_rows, counted(), rows)
        feed = work / "feed"
        feed.mkdir()
        engine = Engine(work, memory_limit=options.memory_limit)
        try:
            events = await engine.run(misp.write_feed, engine, rows, feed, tlp=options.tlp)
        finally:
            engine.close()
        for event in events:
            await _publish(destination, event.path, event.path.name)
        await _publish(destination, feed / misp.HASHES, misp.HASHES)
        await destination.put_bytes(misp.MANIFEST, misp.manifest(events, options.tlp))
    summary.files = len(events) + 2
    current = {event.path.name for event in events}
    for key in await destination.list_keys(""):
        if _EVENT_FILE.match(key) and key not in current:
            await destination.delete(key)  # an event of an earlier export, now unlisted


async def _publish(destination: Store, local: Path, key: str) -> None:
    async with destination.staging(key) as staged:
        await asyncio.to_thread(shutil.copyfile, local, staged)
        await destination.commit(staged, key)
