"""The indicator builder's view of a harvester lake: driven by its manifest, either format.

What counts is what the manifest records: the rows of the complete windows, in the
files a Hive partition names, or in the Iceberg table at the snapshots that committed
them. A file a killed run left unrecorded, or rows of windows not complete, are never
read.

**Day tokens** (pure, :func:`recorded_days`), per manifest partition (one feed's month):

* Hive: a day's token digests the recorded files of that day (key, size, version) and
  the complete windows they hold. A re-harvest (``--force``, ``--lookback``) that
  changes a day rewrites its file (a new version) and records it; ``verify --repair``
  drops a damaged file and its windows; either way the token changes.
* Iceberg: a day's token digests its complete windows (bounds, rows, and the snapshot
  and sequence number that committed each). A re-harvest that changes a window commits
  a new snapshot and records it; a repair drops the window.

**Flat cost.** The head lists every (feed, month) with the version of the partition it
was computed from. A month whose version is the one the builder's state recorded is
taken from the state without being read: a build with nothing new reads the head and
the state, whatever the history. The state keeps the version of the partition as it was
read, so a head left behind by a killed run (the partition newer than the head says)
only costs that partition's read until a run heals the head.

**Reading a day** reads the recorded files of the day through the store and keeps the
rows of the complete windows (Hive), or scans the feed's Iceberg table with those
windows as the row filter (:class:`~harvester.iceberg.reader.WindowReader`; pyiceberg is
imported only then). A recorded file that is missing is skipped with a warning
(``verify`` reports it, ``verify --repair`` drops it from the manifest).

A lake with no head is read from its partitions (a damaged head, as ``status`` does) or,
written by version 1 of the harvester, from its version 1 manifest (in memory, as
``status`` does). A folder with no manifest at all is listed (:class:`HiveDaySource`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import structlog

from harvester.config import check_namespace
from harvester.errors import ConfigError, unwrap
from harvester.intel.source import HiveDaySource, day_schema, read_file
from harvester.intel.state import Group, Index, State
from harvester.intervals import Spans
from harvester.lake import days as day_rows
from harvester.lake.layout import day_of, day_start
from harvester.manifest import legacy
from harvester.manifest.io import Manifest, Versioned
from harvester.manifest.model import Partition
from harvester.manifest.model import month_of as month_of_epoch
from harvester.schemas import FEEDS
from harvester.storage import ABSENT, Store

if TYPE_CHECKING:
    from harvester.iceberg.reader import WindowReader

log = structlog.get_logger("harvester")

DAY = 86_400
HIVE, ICEBERG = "hive", "iceberg"


@dataclass(frozen=True, kw_only=True)
class IcebergAccess:
    """How to reach an Iceberg lake's catalog: ``run``'s ``--catalog`` and ``--namespace``."""

    out: str
    """The lake (``--out``): the default catalog is ``{out}/_catalog.db``."""
    catalog: str | None = None
    namespace: str | None = None
    """None: the default namespace."""
    s3_endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if self.namespace is not None:
            check_namespace(self.namespace)
        if self.catalog is not None and not self.catalog.strip():
            raise ConfigError("--catalog is empty; name the lake's catalog, or leave it out")

    @property
    def given(self) -> bool:
        """Whether a catalog or namespace was asked for (they mean nothing to a Hive lake)."""
        return self.catalog is not None or self.namespace is not None


@dataclass(frozen=True, kw_only=True)
class RecordedDay:
    """What the manifest records of one (feed, day): which rows count, and where."""

    token: str
    windows: Spans
    """The complete windows, cut to the day: the rows that count lie in them."""
    files: tuple[str, ...] = ()
    """Hive: the recorded files holding those rows."""

    def merged(self, other: RecordedDay) -> RecordedDay:
        """Both partitions' records of one day (only Nd windows spread a day over two)."""
        return RecordedDay(
            token=_digest([self.token, other.token]),
            windows=self.windows | other.windows,
            files=tuple(sorted({*self.files, *other.files})),
        )


def recorded_days(part: Partition, table_format: str) -> dict[date, RecordedDay]:
    """Every day ``part`` records rows of, with its token (pure)."""
    if table_format == ICEBERG:
        return _iceberg_days(part)
    complete = part.complete()
    found: dict[date, RecordedDay] = {}
    by_day: dict[str, list[str]] = {}
    for record in part.files.values():
        by_day.setdefault(record.day, []).append(record.key)
    for text, keys in sorted(by_day.items()):
        day = date.fromisoformat(text)
        start = day_start(day)
        windows = complete.clip(start, start + DAY)
        held = [part.files[k] for k in sorted(keys) if part.files[k].windows & windows]
        if not held:
            continue  # files of no complete window: a fold or a repair under way
        found[day] = RecordedDay(
            token=_digest(
                [HIVE, _spans(windows), *(f"{f.key}\t{f.size}\t{f.version}" for f in held)]
            ),
            windows=windows,
            files=tuple(f.key for f in held),
        )
    return found


def _iceberg_days(part: Partition) -> dict[date, RecordedDay]:
    windows: dict[date, list[tuple[int, int, int, int | None, int | None]]] = {}
    for w in part.windows.values():
        day, last = day_of(w.start), day_of(w.end - 1)
        while day <= last:
            windows.setdefault(day, []).append((w.start, w.end, w.rows, w.snapshot, w.sequence))
            day += timedelta(days=1)
    found = {}
    for day, held in sorted(windows.items()):
        if not any(rows for _, _, rows, _, _ in held):
            continue  # complete, and empty
        start = day_start(day)
        found[day] = RecordedDay(
            token=_digest([ICEBERG, *("\t".join(map(str, w)) for w in sorted(held))]),
            windows=Spans.of((s, e) for s, e, *_ in held).clip(start, start + DAY),
        )
    return found


def _spans(spans: Spans) -> str:
    return ",".join(f"{s}-{e}" for s, e in spans)


def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


class ManifestDaySource:
    """:class:`~harvester.intel.source.DaySource` over a lake's manifest (see the module)."""

    def __init__(self, store: Store, *, iceberg: IcebergAccess | None = None) -> None:
        self.store = store
        self.manifest = Manifest(store)
        self.access = iceberg or IcebergAccess(out=store.url())
        self.table_format = HIVE
        self.step = DAY
        self._parts: dict[tuple[str, str], dict[date, RecordedDay]] = {}
        self._listing: HiveDaySource | None = None
        self._reader: WindowReader | None = None

    async def index(self, known: State | None) -> Index:
        """Every recorded day, by (feed, month); months unchanged since ``known`` unread."""
        head, expect = await self.manifest.read_head()
        months: dict[str, dict[str, str]] = {}
        if head is not None:
            self.table_format, self.step = head.table_format, head.window
            for feed in FEEDS:
                summaries = head.feed(feed).months
                months[feed] = {m: s.version for m, s in summaries.items()}
        else:
            found = await self._without_head(expect is not ABSENT)
            if found is None:
                self._check_access()
                log.warning("indicators.no_manifest", lake=self.store.url())
                self._listing = HiveDaySource(self.store)
                return await self._listing.index(known)
            for part, version in found:
                self._parts[part.feed, part.month] = recorded_days(part, self.table_format)
                months.setdefault(part.feed, {})[part.month] = version
        self._check_access()
        index: dict[str, dict[str, Group]] = {}
        unread: dict[str, list[str]] = {}
        for feed, versions in months.items():
            groups = index.setdefault(feed, {})
            for month, version in versions.items():
                kept = known.group(feed, month, version) if known is not None else None
                if (feed, month) in self._parts:
                    groups[month] = self._group(feed, month, version)
                elif kept is not None:
                    groups[month] = kept
                else:
                    unread.setdefault(feed, []).append(month)
        if self.table_format == ICEBERG and unread:
            # Something may have changed: reach the tables now, so a wrong --catalog or
            # --namespace is refused before the build writes anything.
            reader = self._window_reader()
            for feed in unread:
                await asyncio.to_thread(reader.table, feed)
        for feed, read in zip(unread, await self._read(unread), strict=True):
            for month, current in read.items():
                self._parts[feed, month] = recorded_days(current.part, self.table_format)
                index[feed][month] = self._group(feed, month, current.version or "")
        log.info(
            "indicators.manifest",
            table_format=self.table_format,
            months=sum(len(v) for v in months.values()),
            read=sum(len(v) for v in unread.values()),
        )
        return {feed: groups for feed, groups in index.items() if groups}

    def _group(self, feed: str, month: str, version: str) -> Group:
        days = self._parts[feed, month]
        return Group(version=version, days={day: r.token for day, r in days.items()})

    async def _read(self, unread: Mapping[str, Sequence[str]]) -> list[dict[str, Versioned]]:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.manifest.read_partitions(feed, months))
                    for feed, months in unread.items()
                ]
        except BaseExceptionGroup as errors:
            raise unwrap(errors) from None
        return [task.result() for task in tasks]

    async def _without_head(self, damaged: bool) -> list[tuple[Partition, str]] | None:
        """The partitions, with their versions, of a lake with no (readable) head.

        None when the lake has no manifest at all.
        """
        keys = [] if damaged else await legacy.legacy_keys(self.store)
        if keys:
            head, parts = await legacy.build(self.store, keys, table_format=HIVE)
            self.step = head.window
            log.warning("indicators.manifest_version_1", lake=self.store.url())
            return [(part, "") for part in parts]  # in memory: read again every time
        found = [(v.part, v.version) for v in await self.manifest.all_partitions() if v.version]
        # (a damaged partition reads as empty, and has no version: nothing of it counts)
        if not found and not damaged:
            return None
        log.warning("indicators.head_missing", lake=self.store.url(), partitions=len(found))
        windows = [w for part, _ in found for w in part.windows.values()]
        if any(w.snapshot is not None for w in windows):
            self.table_format = ICEBERG
        if windows:
            self.step = windows[0].end - windows[0].start
        return found

    def _check_access(self) -> None:
        if self.table_format != ICEBERG and self.access.given:
            raise ConfigError(
                f"--catalog and --namespace are for Iceberg lakes; {self.store.url()} is in "
                "the Hive layout: leave them out"
            )

    async def read_day(self, feed: str, day: date, columns: Sequence[str]) -> pa.Table:
        """The recorded rows of ``feed`` on ``day``, ``columns`` only, in the feed's types."""
        if self._listing is not None:
            return await self._listing.read_day(feed, day, columns)
        schema = day_schema(feed, columns)
        record = await self._recorded(feed, day)
        if record is None:
            return schema.empty_table()
        if self.table_format == ICEBERG:
            reader = self._window_reader()
            return await asyncio.to_thread(reader.read, feed, record.windows, columns)
        wanted = list(dict.fromkeys([*columns, "timestamp"]))
        tables = [schema.empty_table()]
        for key in record.files:
            table = await read_file(self.store, key, wanted, day_schema(feed, wanted))
            if table is None:
                log.warning(
                    "indicators.file_missing",
                    key=key,
                    hint="run `harvester verify --repair`, then harvest its windows again",
                )
                continue
            tables.append(day_rows.select(table, record.windows).select(list(columns)))
        return pa.concat_tables(tables)

    async def _recorded(self, feed: str, day: date) -> RecordedDay | None:
        """What the partitions that may hold ``day`` record of it (read if not yet)."""
        start = day_start(day)
        months = sorted({month_of_epoch(start // self.step * self.step), day.strftime("%Y-%m")})
        unread = [m for m in months if (feed, m) not in self._parts]
        if unread:
            for month, current in (await self.manifest.read_partitions(feed, unread)).items():
                self._parts[feed, month] = recorded_days(current.part, self.table_format)
        found = [r for m in months if (r := self._parts[feed, m].get(day)) is not None]
        if not found:
            return None
        record = found[0]
        for other in found[1:]:
            record = record.merged(other)
        return record

    def _window_reader(self) -> WindowReader:
        if self._reader is None:
            from harvester.iceberg import require_pyiceberg
            from harvester.iceberg.reader import WindowReader

            require_pyiceberg()
            self._reader = WindowReader(
                self.access.out,
                self.access.catalog,
                namespace=self.access.namespace,
                s3_endpoint_url=self.access.s3_endpoint_url,
            )
        return self._reader
