"""Where the indicator builder reads the lake from: :class:`DaySource`.

The builder works a (feed, UTC day) at a time, and needs two things of the lake: an
:data:`~harvester.intel.state.Index` of the days holding data, each with a token that
changes whenever that day's data changes, and the day's rows. A lake the harvester
wrote is read through its manifest (:mod:`~harvester.intel.manifest_source`), in either
table format. :class:`HiveDaySource` is for a folder of Hive-layout Parquet files with
no manifest at all (written by another tool, or by hand): it lists every feed's folder,
and counts every file there.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from datetime import date
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import StorageError, unwrap
from harvester.intel.schema import month_of
from harvester.intel.state import Group, Index, State
from harvester.schemas import FEEDS
from harvester.storage import ObjectInfo, Store

_DAY_FOLDER = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


class DaySource(Protocol):
    """The lake, as the indicator builder sees it: versioned (feed, day) tables."""

    async def index(self, known: State | None) -> Index:
        """Every day of every feed holding data, with its token, by group.

        ``known`` is the state of the last build (None for a rebuild): a group whose
        object is still at the version it records may be taken from it unread.
        """
        ...

    async def read_day(self, feed: str, day: date, columns: Sequence[str]) -> pa.Table:
        """``columns`` of every row of ``feed`` on ``day`` (the feed's own types)."""
        ...


def day_schema(feed: str, columns: Sequence[str]) -> pa.Schema:
    """The feed's own types of ``columns``, in that order."""
    return pa.schema([FEEDS[feed].schema.field(c) for c in columns])


class HiveDaySource:
    """:class:`DaySource` over ``{feed}/dt=YYYY-MM-DD/*.parquet`` with no manifest.

    Lists every feed's folder on every build (a group per month, with no version, so
    nothing is taken from the state unread). A day's token digests its files' names,
    sizes and versions (the ETag on S3; inode, size and mtime on local disk).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._files: dict[tuple[str, date], list[str]] = {}

    async def index(self, known: State | None) -> Index:
        """List each feed's folder once; remember each day's files for :meth:`read_day`."""
        del known  # a listing has no version to compare
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {feed: group.create_task(self._feed(feed)) for feed in FEEDS}
        except BaseExceptionGroup as errors:
            raise unwrap(errors) from None
        return {feed: found for feed, task in tasks.items() if (found := task.result())}

    async def _feed(self, feed: str) -> dict[str, Group]:
        days: dict[date, list[ObjectInfo]] = {}
        for found in await self.store.list(f"{feed}/"):
            parts = found.key.split("/")
            match = _DAY_FOLDER.match(parts[1]) if len(parts) == 3 else None
            if match is None or not parts[2].endswith(".parquet") or parts[2].startswith("_"):
                continue
            try:
                day = date.fromisoformat(match[1])
            except ValueError:
                continue  # dt=2024-02-30 is no partition of ours
            days.setdefault(day, []).append(found)
        months: dict[str, dict[date, str]] = {}
        for day, files in sorted(days.items()):
            self._files[feed, day] = [f.key for f in files]
            months.setdefault(month_of(day), {})[day] = _token(files)
        return {month: Group(version="", days=tokens) for month, tokens in months.items()}

    async def read_day(self, feed: str, day: date, columns: Sequence[str]) -> pa.Table:
        """The day's files, ``columns`` only, as one table (empty if none is left)."""
        if (feed, day) not in self._files:
            await self._feed(feed)
        schema = day_schema(feed, columns)
        tables = [schema.empty_table()]
        for key in self._files.get((feed, day), []):
            table = await read_file(self.store, key, columns, schema)
            if table is not None:
                tables.append(table)
            # else replaced or removed since it was listed: this build records the
            # listed token, so the next build sees the change and reads the day again.
        return pa.concat_tables(tables)


async def read_file(
    store: Store, key: str, columns: Sequence[str], schema: pa.Schema
) -> pa.Table | None:
    """``columns`` of the Parquet file ``key`` in ``schema``'s types; None if it is gone."""
    async with store.fetch(key) as found:
        if found is None:
            return None
        return await asyncio.to_thread(_read, found[0], columns, schema, store.url(key))


def _read(path: object, columns: Sequence[str], schema: pa.Schema, where: str) -> pa.Table:
    try:
        # One file, read as itself: no partition column guessed from its folder.
        table = pq.read_table(path, columns=list(columns), partitioning=None)
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, OSError) as exc:
        raise StorageError(
            f"cannot read {where} for the indicator table: {exc}; run `harvester verify "
            "--repair` and harvest its windows again, then build again"
        ) from exc


def _token(files: Sequence[ObjectInfo]) -> str:
    text = "\n".join(
        f"{f.key.rsplit('/', 1)[-1]}\t{f.size}\t{f.version}"
        for f in sorted(files, key=lambda f: f.key)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]
