"""Where the indicator builder reads the lake from: :class:`DaySource`.

The builder works a (feed, UTC day) at a time, and needs two things of the lake: a
token per (feed, day) that changes whenever that day's data changes, and the day's
rows. :class:`HiveDaySource` serves today's Hive layout
(``{feed}/dt=YYYY-MM-DD/*.parquet``) through the :class:`~harvester.storage.Store`, so
it works the same on disk and on S3; a manifest-driven source can replace it without
the builder changing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import StorageError
from harvester.schemas import FEEDS
from harvester.storage import ObjectInfo, Store

_DAY_FOLDER = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


class DaySource(Protocol):
    """The lake, as the indicator builder sees it: versioned (feed, day) tables."""

    async def day_versions(self, feed: str) -> Mapping[date, str]:
        """Every day of ``feed`` holding data, with a token that changes with its data."""
        ...

    async def read_day(self, feed: str, day: date, columns: Sequence[str]) -> pa.Table:
        """``columns`` of every row of ``feed`` on ``day`` (the feed's own types)."""
        ...


class HiveDaySource:
    """:class:`DaySource` over ``{feed}/dt=YYYY-MM-DD/*.parquet`` in a store.

    A day's token digests its files' names, sizes and versions (the ETag on S3; inode,
    size and mtime on local disk): re-harvesting a window rewrites its files under the
    same names, and a rewritten file always has a new local version or, with other
    content, a new ETag.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._files: dict[tuple[str, date], list[str]] = {}

    async def day_versions(self, feed: str) -> dict[date, str]:
        """List ``{feed}/`` once; remember each day's files for :meth:`read_day`."""
        if feed not in FEEDS:
            raise ValueError(f"unknown feed {feed!r}")
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
        versions = {}
        for day, files in sorted(days.items()):
            self._files[feed, day] = [f.key for f in files]
            versions[day] = _token(files)
        return versions

    async def read_day(self, feed: str, day: date, columns: Sequence[str]) -> pa.Table:
        """The day's files, ``columns`` only, as one table (empty if none is left)."""
        if (feed, day) not in self._files:
            await self.day_versions(feed)
        schema = pa.schema([FEEDS[feed].schema.field(c) for c in columns])
        tables = [pa.table({c: [] for c in columns}, schema=schema)]
        for key in self._files.get((feed, day), []):
            data = await self.store.get_bytes(key)
            if data is None:
                # Replaced or removed since it was listed: this build records the listed
                # token, so the next build sees the change and reads the day again.
                continue
            tables.append(await asyncio.to_thread(_read, data, columns, schema, key))
        return pa.concat_tables(tables)


def _read(data: bytes, columns: Sequence[str], schema: pa.Schema, key: str) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(data), columns=list(columns))
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, OSError) as exc:
        raise StorageError(
            f"cannot read {key} for the indicator table: {exc}; repair the file (harvest its "
            "window again with --force) and build again"
        ) from exc


def _token(files: Sequence[ObjectInfo]) -> str:
    text = "\n".join(
        f"{f.key.rsplit('/', 1)[-1]}\t{f.size}\t{f.version}"
        for f in sorted(files, key=lambda f: f.key)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]
