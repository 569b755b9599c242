"""The manifest: which (feed, window) units are complete, with what query, and where.

One small JSON object per completed unit at ``_manifest/{feed}/{window}.json``,
written only after the unit's data files are durable. One object per unit means
shards and re-runs never read-modify-write a shared file: coordination is by object
name alone. A unit is *done* for a run when its entry exists with the same query
fingerprint; otherwise it is harvested again and its files replaced.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from harvester.errors import ConfigError, StorageError
from harvester.storage import Store, StoredFile
from harvester.windows import Window, format_api

PREFIX = "_manifest"
VERSION = 1


def entry_key(feed: str, window: Window) -> str:
    """The manifest object of one (feed, window)."""
    return f"{PREFIX}/{feed}/{window.key}.json"


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A completed (feed, window): what was asked, what was written."""

    feed: str
    window: Window
    fingerprint: str
    query: dict[str, Any]
    rows: int
    pages: int
    files: tuple[StoredFile, ...] = ()
    completed_at: str = field(default_factory=lambda: format_api(datetime.now(UTC)))
    run_id: str = ""
    shard: str = "0/1"

    def to_json(self) -> bytes:
        """Serialise for the store."""
        body = {
            "version": VERSION,
            "feed": self.feed,
            "window": {"start": format_api(self.window.start), "end": format_api(self.window.end)},
            "fingerprint": self.fingerprint,
            "query": self.query,
            "rows": self.rows,
            "pages": self.pages,
            "files": [asdict(f) for f in self.files],
            "completed_at": self.completed_at,
            "run_id": self.run_id,
            "shard": self.shard,
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes, *, key: str) -> Entry:
        """Parse a manifest object; a damaged one is a clear error, not a skip."""
        try:
            body = orjson.loads(data)
            return cls(
                feed=body["feed"],
                window=Window(
                    start=datetime.fromisoformat(body["window"]["start"]),
                    end=datetime.fromisoformat(body["window"]["end"]),
                ),
                fingerprint=body["fingerprint"],
                query=body["query"],
                rows=int(body["rows"]),
                pages=int(body["pages"]),
                files=tuple(StoredFile(**f) for f in body["files"]),
                completed_at=body.get("completed_at", ""),
                run_id=body.get("run_id", ""),
                shard=body.get("shard", "0/1"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"manifest object {key} is damaged ({exc}); delete it to harvest that window again"
            ) from exc


async def record(store: Store, entry: Entry) -> None:
    """Mark a unit complete. Call only after its files are committed."""
    await store.put_bytes(entry_key(entry.feed, entry.window), entry.to_json())


async def load(store: Store, feed: str, *, parallel: int = 16) -> dict[Window, Entry]:
    """Every manifest entry of ``feed``, by window."""
    keys = [k for k in await store.list_keys(f"{PREFIX}/{feed}/") if k.endswith(".json")]
    gate = asyncio.Semaphore(parallel)

    async def read(key: str) -> Entry | None:
        async with gate:
            data = await store.get_bytes(key)
        return None if data is None else Entry.from_json(data, key=key)

    async with asyncio.TaskGroup() as group:
        reads = [group.create_task(read(k)) for k in keys]
    return {e.window: e for task in reads if (e := task.result()) is not None}


def check_grid(feed: str, planned: Iterable[Window], existing: Iterable[Window]) -> None:
    """Refuse a plan whose windows cut across windows the lake already holds.

    Files are named by window; a 6h window over a day stored as one 1d window would
    hold the same records twice. The fix is to keep the lake's window size.
    """
    have = sorted(existing)
    starts = [w.start for w in have]
    for window in planned:
        i = bisect_left(starts, window.start)
        for other in have[max(0, i - 1) : i + 2]:
            if other != window and other.start < window.end and window.start < other.end:
                raise ConfigError(
                    f"the lake already holds {feed} window {other}, which overlaps planned "
                    f"window {window}; re-run with the --window the lake was built with, "
                    "or use a new --out"
                )
