"""Leases: which run is working on a (feed, month) right now.

Shards of one job run at once, and cron may start tonight's run while last night's is
still going; a lock on the whole lake would serialise the shards for nothing. So a run
takes a *lease* on each (feed, month) it is about to harvest: an object
``_leases/{feed}/{YYYY-MM}.json`` naming its owner (run, host, process), a time-to-live
and a fencing token, written by compare-and-set.

* A month nobody holds, or whose lease expired, was released, or belongs to a process
  that no longer exists on this host, is taken (the token goes up by one). Taken from
  another run, it may hold windows that run completed after this one planned: the
  orchestrator reads its partition again before harvesting any of it.
* A month another live run holds is left to it: this run skips its windows and says so.
* The run renews its leases every ``ttl / 3`` seconds. A renewal that fails means
  another run took the lease after ours expired: that month is *lost*, and nothing of
  it is committed (the manifest also refuses a partition written under a newer token).

Expiry is wall-clock time, so hosts whose clocks differ by more than a fraction of the
time-to-live could both believe they hold a lease; the fencing token and the manifest's
compare-and-set keep the lake correct even then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from harvester.errors import Conflict, StorageError
from harvester.retry import Sleep
from harvester.storage import ABSENT, Blob, Expect, ObjectInfo, Store

PREFIX = "_leases"
TTL = 120.0
"""Seconds a lease lives without renewal (default of ``--lease-ttl``)."""

log = structlog.get_logger("harvester")

_ACTIVE: set[str] = set()
"""Runs going on in this process: a finished run's lease is not live, even in the same
process (an Airflow worker runs many harvests in one process)."""

Block = tuple[str, str]
"""A (feed, month) lease."""


def lease_key(feed: str, month: str) -> str:
    """The lease object of one (feed, month)."""
    return f"{PREFIX}/{feed}/{month}.json"


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and brackets: the fields follow the last ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True, kw_only=True)
class Owner:
    """Who holds a lease: a run, and the process on a host that runs it."""

    run_id: str
    host: str
    pid: int
    started: int | None
    """The process's start time (ticks since boot), so a reused pid is not mistaken."""

    @classmethod
    def current(cls, run_id: str) -> Owner:
        """The current process, running ``run_id``."""
        pid = os.getpid()
        return cls(run_id=run_id, host=socket.gethostname(), pid=pid, started=_start_ticks(pid))

    def alive(self) -> bool | None:
        """False when it surely is gone (same host, no such process); None if unknown."""
        if self.host != socket.gethostname():
            return None
        if self.pid == os.getpid():
            return self.run_id in _ACTIVE
        if not Path("/proc").is_dir():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        started = _start_ticks(self.pid)
        return started is not None and (self.started is None or started == self.started)

    def __str__(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host})"


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A lease as stored."""

    owner: Owner
    token: int
    expires: float
    """Wall-clock time (epoch seconds) it lapses unless renewed."""
    released: bool = False

    def live(self, now: float) -> bool:
        """Whether it still binds others."""
        return not self.released and self.expires > now and self.owner.alive() is not False

    def to_json(self) -> bytes:
        """The stored form."""
        return orjson.dumps({**asdict(self), "owner": asdict(self.owner)})

    @classmethod
    def from_json(cls, data: bytes) -> Lease:
        """Inverse of :meth:`to_json`; ValueError/KeyError/TypeError if damaged."""
        body: dict[str, Any] = orjson.loads(data)
        return cls(
            owner=Owner(**body["owner"]),
            token=int(body["token"]),
            expires=float(body["expires"]),
            released=bool(body.get("released", False)),
        )


@dataclass(frozen=True, kw_only=True)
class _Offer:
    """The lease a run is about to write, and what it found there."""

    lease: Lease
    expect: Expect
    found: bool
    """Whether a lease object was there (damaged, perhaps)."""
    current: Lease | None
    """The lease that was there, when it could be read."""


class Leases:
    """The leases of one run."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        *,
        ttl: float = TTL,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self.owner = Owner.current(run_id)
        self.ttl = ttl
        self._clock = clock
        self._sleep = sleep
        self._held: dict[Block, tuple[int, str]] = {}  # token, version
        self.lost: set[Block] = set()
        self.holders: dict[Block, Owner] = {}
        """Who held the blocks this run could not take."""
        self.taken_over: set[Block] = set()
        """Blocks this run took from another run (released, expired or dead): that run
        may have completed some of their windows after this run planned."""
        self.seized: set[Block] = set()
        """Blocks taken from a lease that was never handed back (expired, or its owner
        died): that owner, if alive after all, may still write, so the new holder
        fences it off (writes its token into the partition) before it reads or commits."""
        self._lock = asyncio.Lock()
        _ACTIVE.add(run_id)

    def token(self, block: Block) -> int:
        """The run's token for ``block`` (0 if it holds none)."""
        held = self._held.get(block)
        return held[0] if held else 0

    def blocks(self) -> list[Block]:
        """Every block this run holds (lost ones included)."""
        return list(self._held)

    def holds(self, block: Block) -> bool:
        """Whether this run holds ``block`` and has not lost it."""
        return block in self._held and block not in self.lost

    async def acquire(self, block: Block) -> bool:
        """Take ``block`` unless another live run holds it; True when this run holds it."""
        async with self._lock:
            return await self._acquire(block)

    async def acquire_many(self, blocks: Iterable[Block]) -> dict[Block, bool]:
        """:meth:`acquire` each of ``blocks``; per block, whether this run holds it.

        A span of a sparse range covers many months: their leases are read at once and
        written as one group (:meth:`Store.write_many`), not one after another. A block
        whose write met a conflict is tried again on its own.
        """
        wanted = list(dict.fromkeys(blocks))
        async with self._lock:
            todo = [b for b in wanted if b not in self._held]
            blobs = await self.store.read_many([lease_key(*b) for b in todo])
            offers = {
                block: offer
                for block, blob in zip(todo, blobs, strict=True)
                if (offer := self._offer(block, blob)) is not None
            }
            written = await self.store.write_many(
                [(lease_key(*b), o.lease.to_json(), o.expect) for b, o in offers.items()]
            )
            error: StorageError | None = None
            for (block, offer), outcome in zip(offers.items(), written, strict=True):
                if isinstance(outcome, ObjectInfo):
                    self._took(block, offer, outcome.version)
                elif not isinstance(outcome, Conflict):
                    error = error or outcome  # raised once every lease taken is recorded
            if error is not None:
                raise error
            for block, offer in offers.items():
                if block in self._held:
                    continue
                # Lost a race -- or only the answer (a retried PUT that had landed meets
                # a 412): then the lease is this very offer, and what it took over counts.
                landed = await self._mine(block, offer.lease.token)
                if landed is not None:
                    self._took(block, offer, landed)
                else:
                    await self._acquire(block)
            return {block: self.holds(block) for block in wanted}

    async def _acquire(self, block: Block) -> bool:
        if block in self._held:
            return block not in self.lost
        key = lease_key(*block)
        for _ in range(8):
            offer = self._offer(block, await self.store.read(key))
            if offer is None:
                return False
            try:
                version = (
                    await self.store.write(key, offer.lease.to_json(), expect=offer.expect)
                ).version
            except Conflict:
                # Another run moved first -- or this very write landed and only its
                # answer was lost (a retried PUT then meets a 412): look again.
                landed = await self._mine(block, offer.lease.token)
                if landed is None:
                    continue
                version = landed
            self._took(block, offer, version)
            return True
        return False

    def _offer(self, block: Block, blob: Blob | None) -> _Offer | None:
        """The lease this run would write over ``blob``; None if a live run holds it."""
        expect: Expect = ABSENT
        token = 1
        current: Lease | None = None
        if blob is not None:
            expect = blob.info.version
            try:
                current = Lease.from_json(blob.data)
            except (ValueError, KeyError, TypeError):
                # A damaged lease binds nobody. Its token is lost, and the partitions
                # carry the last one: take one surely above it (the clock in
                # milliseconds; tokens go up by one a run), and fence.
                current = None
                token = int(self._clock() * 1000)
            if current is not None:
                token = current.token + 1
                if current.owner.run_id != self.owner.run_id and current.live(self._clock()):
                    self.holders[block] = current.owner
                    return None
        lease = Lease(owner=self.owner, token=token, expires=self._clock() + self.ttl)
        return _Offer(lease=lease, expect=expect, found=blob is not None, current=current)

    def _took(self, block: Block, offer: _Offer, version: str) -> None:
        """Record ``block`` as held, written at ``version``; note whom it was taken from."""
        self._held[block] = (offer.lease.token, version)
        current = offer.current
        mine = current is not None and current.owner.run_id == self.owner.run_id
        if offer.found and not mine:
            self.taken_over.add(block)
        if offer.found and current is None:
            self.seized.add(block)
        if current is not None and not mine and not current.released:
            # Not handed back: its owner died, or stopped renewing (another host).
            self.seized.add(block)
            log.warning(
                "lease.taken_over",
                feed=block[0],
                month=block[1],
                token=offer.lease.token,
                holder=str(current.owner),
                why="expired" if current.expires <= self._clock() else "owner gone",
            )

    async def renew(self) -> set[Block]:
        """Extend every lease held; return the blocks lost since (taken by another run)."""
        async with self._lock:
            newly: set[Block] = set()
            for block, (token, version) in list(self._held.items()):
                if block in self.lost:
                    continue
                lease = Lease(owner=self.owner, token=token, expires=self._clock() + self.ttl)
                try:
                    info = await self.store.write(
                        lease_key(*block), lease.to_json(), expect=version
                    )
                    version = info.version
                except Conflict:
                    # A retried PUT whose first attempt landed (its answer lost) also
                    # ends in a 412: the lease may still be ours, one version on.
                    mine = await self._mine(block, token)
                    if mine is None:
                        newly.add(block)
                        log.error("lease.lost", feed=block[0], month=block[1], token=token)
                        continue
                    version = mine
                self._held[block] = (token, version)
            self.lost |= newly
            return newly

    async def _mine(self, block: Block, token: int) -> str | None:
        """The lease's version if it still names this run with ``token``, else None."""
        blob = await self.store.read(lease_key(*block))
        if blob is None:
            return None
        try:
            lease = Lease.from_json(blob.data)
        except (ValueError, KeyError, TypeError):
            return None
        if lease.owner.run_id != self.owner.run_id or lease.token != token or lease.released:
            return None
        return blob.info.version

    async def release(self, block: Block) -> None:
        """Give ``block`` up (best effort: an expired lease binds nobody anyway)."""
        async with self._lock:
            held = self._held.get(block)
            if held is None:
                return
            if block not in self.lost:
                token, version = held
                lease = Lease(owner=self.owner, token=token, expires=0.0, released=True)
                with contextlib.suppress(Conflict):
                    await self.store.write(lease_key(*block), lease.to_json(), expect=version)
            # Forgotten only once written: a release cut short is done again at the end.
            self._held.pop(block, None)

    async def release_all(self) -> None:
        """Give up every lease held, as one group write; the run is over."""
        try:
            async with self._lock:
                held = [(b, h) for b, h in self._held.items() if b not in self.lost]
                released = [
                    Lease(owner=self.owner, token=token, expires=0.0, released=True)
                    for _, (token, _) in held
                ]
                written = await self.store.write_many(
                    [
                        (lease_key(*block), lease.to_json(), version)
                        for (block, (_, version)), lease in zip(held, released, strict=True)
                    ]
                )
                error: StorageError | None = None
                for (block, _), outcome in zip(held, written, strict=True):
                    if isinstance(outcome, ObjectInfo | Conflict):
                        self._held.pop(block, None)  # a conflict: not ours any more
                    else:
                        error = error or outcome  # kept: released again, if asked
                for block in self.lost:
                    self._held.pop(block, None)
                if error is not None:
                    raise error
        finally:
            _ACTIVE.discard(self.owner.run_id)
