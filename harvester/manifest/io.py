"""Reading and writing the manifest with conditional writes (compare-and-set).

Keys, relative to the lake::

    _manifest/_head.json              the head (one object)
    _manifest/{feed}/{YYYY-MM}.json   one partition per feed and month

Every update is a loop: read the object and its version, compute the new object with a
pure, idempotent function, write it on condition that the version is still the one
read (``If-Match``; ``If-None-Match`` for a new object), and on a conflict read again
and recompute. Several shards update the head at once this way without a lock, and a
write whose success was lost (a retried PUT that answers 412) is simply recomputed: the
function is idempotent, so the object ends as if it had been written once.

A damaged object never stops the lake. A damaged partition reads as empty, so its
windows are harvested again and the next write replaces it; a damaged head is rebuilt
from the partitions. Both are logged as ``manifest.damaged``.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson
import structlog

from harvester.errors import Conflict, StorageError, TransientStorageError
from harvester.manifest.model import Head, Partition
from harvester.retry import Sleep
from harvester.storage import ABSENT, Blob, Expect, ObjectInfo, Store

PREFIX = "_manifest"
HEAD_KEY = f"{PREFIX}/_head.json"
PARTITION = re.compile(rf"^{PREFIX}/(?P<feed>[a-z_]+)/(?P<month>\d{{4}}-\d{{2}})\.json$")
ATTEMPTS = 64
"""Compare-and-set attempts before giving up (each one lost a race to another writer)."""
PARALLEL = 16

log = structlog.get_logger("harvester")


def partition_key(feed: str, month: str) -> str:
    """The object of one (feed, month)."""
    return f"{PREFIX}/{feed}/{month}.json"


class Fenced(StorageError):
    """A newer lease holder has written this partition: this run must not write it."""


def _versioned(feed: str, month: str, blob: Blob | None) -> Versioned:
    """A partition as read; an empty one when it does not exist or is damaged."""
    empty = Partition(feed=feed, month=month)
    if blob is None:
        return Versioned(part=empty, version=None)
    key = partition_key(feed, month)
    try:
        part = Partition.from_json(orjson.loads(blob.data))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("manifest.damaged", key=key, error=str(exc))
        return Versioned(part=empty, version=None, damaged=blob.info.version)
    if (part.feed, part.month) != (feed, month):
        log.warning("manifest.damaged", key=key, error="names another feed or month")
        return Versioned(part=empty, version=None, damaged=blob.info.version)
    return Versioned(part=part, version=blob.info.version)


def _fenced(feed: str, month: str, current: Versioned, token: int) -> Fenced:
    return Fenced(
        f"{partition_key(feed, month)} was written under lease {current.part.token}, "
        f"newer than this run's {token}: another run took over {feed} {month}"
    )


@dataclass(frozen=True, kw_only=True)
class Versioned:
    """A partition as read, with the version to write it back on condition of."""

    part: Partition
    version: str | None
    """None: the object does not exist (or was damaged: see ``damaged``)."""
    damaged: str | None = None
    """The version of a damaged object that this empty partition stands in for."""

    @property
    def expect(self) -> Expect:
        """The condition for writing it back."""
        if self.version is not None:
            return self.version
        return self.damaged if self.damaged is not None else ABSENT


@dataclass(frozen=True, kw_only=True)
class PartitionUpdate:
    """A change to one month's partition, to be written on condition of ``known``."""

    month: str
    change: Callable[[Partition], Partition]
    token: int | None
    """The writer's lease token (see :meth:`Manifest.update_partition`)."""
    known: Versioned
    """The partition as the writer last read it."""


class Manifest:
    """The manifest of the lake in ``store``."""

    def __init__(self, store: Store, *, sleep: Sleep = asyncio.sleep) -> None:
        self.store = store
        self._sleep = sleep

    # --- reading ---------------------------------------------------------------------

    async def read_head(self) -> tuple[Head | None, Expect]:
        """The head and the condition to write it back; None when there is none (or damaged)."""
        blob = await self.store.read(HEAD_KEY)
        if blob is None:
            return None, ABSENT
        try:
            return Head.from_json(orjson.loads(blob.data)), blob.info.version
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("manifest.damaged", key=HEAD_KEY, error=str(exc))
            return None, blob.info.version

    async def read_partition(self, feed: str, month: str) -> Versioned:
        """One partition; an empty one when it does not exist or is damaged."""
        return _versioned(feed, month, await self.store.read(partition_key(feed, month)))

    async def read_partitions(self, feed: str, months: Iterable[str]) -> dict[str, Versioned]:
        """Several partitions of ``feed``, read together (:meth:`Store.read_many`)."""
        wanted = list(dict.fromkeys(months))
        blobs = await self.store.read_many([partition_key(feed, m) for m in wanted])
        return {m: _versioned(feed, m, blob) for m, blob in zip(wanted, blobs, strict=True)}

    # --- writing ---------------------------------------------------------------------

    async def update_partition(
        self,
        feed: str,
        month: str,
        change: Callable[[Partition], Partition],
        *,
        token: int | None,
        known: Versioned | None = None,
    ) -> Versioned:
        """Apply ``change`` to the partition until a conditional write of it succeeds.

        ``token`` is the writer's lease token: a partition already written under a newer
        lease raises :class:`Fenced` instead of being overwritten. ``None`` is for
        writers that hold no lease (a migration, a repair): no check, token unchanged.
        ``known``, the partition as the caller last read it, is tried first instead of
        reading it again; if it is no longer current, the write's condition fails and
        the partition is read afresh.
        """
        for attempt in range(ATTEMPTS):
            current = known if known is not None and attempt == 0 else None
            if current is None:
                current = await self.read_partition(feed, month)
            if token is not None and current.part.token > token:
                raise _fenced(feed, month, current, token)
            new = change(current.part)
            if token:
                new = new.with_changes(token=token)
            data = orjson.dumps(new.to_json())
            try:
                info = await self.store.write(
                    partition_key(feed, month), data, expect=current.expect
                )
            except (Conflict, TransientStorageError):
                # Lost a race, or the answer: read again. If the write did land, the
                # change is idempotent and recomputes to the same object.
                await self._backoff(attempt)
                continue
            return Versioned(part=new, version=info.version)
        raise Conflict(
            f"{partition_key(feed, month)}: lost {ATTEMPTS} races to other writers in a row; "
            "run the same command again"
        )

    async def update_partitions(
        self, feed: str, updates: Sequence[PartitionUpdate]
    ) -> dict[str, Versioned | StorageError]:
        """:meth:`update_partition` for months of one feed; per month, the result or error.

        The first try of every month is one group write (:meth:`Store.write_many`) on
        condition of the partition each update knows: a sparse year's commit records a
        feed's twelve months at once, not one after another. A month whose condition
        failed is updated again on its own, reading it afresh.
        """
        results: dict[str, Versioned | StorageError] = {}
        tried: list[tuple[PartitionUpdate, Partition]] = []
        for update in updates:
            current = update.known
            if update.token is not None and current.part.token > update.token:
                results[update.month] = _fenced(feed, update.month, current, update.token)
                continue
            new = update.change(current.part)
            if update.token:
                new = new.with_changes(token=update.token)
            tried.append((update, new))
        written = await self.store.write_many(
            [
                (partition_key(feed, u.month), orjson.dumps(new.to_json()), u.known.expect)
                for u, new in tried
            ]
        )
        for (update, new), outcome in zip(tried, written, strict=True):
            if isinstance(outcome, ObjectInfo):
                results[update.month] = Versioned(part=new, version=outcome.version)
            elif isinstance(outcome, Conflict | TransientStorageError):
                try:
                    results[update.month] = await self.update_partition(
                        feed, update.month, update.change, token=update.token
                    )
                except StorageError as exc:
                    results[update.month] = exc
            else:
                results[update.month] = outcome
        return results

    async def update_head(self, change: Callable[[Head | None], Head]) -> Head:
        """Apply ``change`` to the head (None when there is none) until a write succeeds.

        A change that hands back the very head it was given writes nothing.
        """
        for attempt in range(ATTEMPTS):
            head, expect = await self.read_head()
            new = change(head)
            if head is not None and new is head:
                return head
            try:
                await self.store.write(HEAD_KEY, orjson.dumps(new.to_json()), expect=expect)
            except (Conflict, TransientStorageError):
                await self._backoff(attempt)
                continue
            return new
        raise Conflict(
            f"{HEAD_KEY}: lost {ATTEMPTS} races to other writers in a row; "
            "run the same command again"
        )

    async def _backoff(self, attempt: int) -> None:
        # Races are short: a little jitter keeps two writers from colliding in step.
        await self._sleep(random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7))))

    # --- the whole history (repairs and migration only) ------------------------------

    async def all_partitions(self) -> list[Versioned]:
        """Every partition of every feed: one listing and a read each (repairs only)."""
        infos = await self.store.list(f"{PREFIX}/")
        names = [m for i in infos if (m := PARTITION.match(i.key))]
        gate = asyncio.Semaphore(PARALLEL)

        async def one(feed: str, month: str) -> Versioned:
            async with gate:
                return await self.read_partition(feed, month)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(m["feed"], m["month"])) for m in names]
        return [t.result() for t in tasks]
