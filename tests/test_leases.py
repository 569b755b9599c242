"""Leases taken as a group: what a lost answer or a failed write leaves behind."""

from __future__ import annotations

import asyncio

from harvester.errors import Conflict, TransientStorageError
from harvester.leases import Lease, Leases, Owner, lease_key
from harvester.storage import Expect, ObjectInfo

from memstore import MemoryStore


class LandedThenConflict(MemoryStore):
    """S3 when a PUT lands, its answer is lost, and botocore's retry of it meets a 412."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key: str | None = key

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        info = await super().write(key, data, expect=expect)
        if key == self.key:
            self.key = None
            raise Conflict(f"{key}: 412 for a retried PUT whose first attempt landed")
        return info


FAR = Owner(run_id="20240101T000000Z-far0ff", host="harvester-far", pid=4242, started=None)
MONTHS = [("ips", "2024-01"), ("ips", "2024-02"), ("ips", "2024-03")]


def test_a_lease_write_whose_answer_was_lost_still_counts_as_taken_over() -> None:
    """An expired lease's write lands and its answer is lost: taken over all the same.

    The lease is this run's, taken from a run that never handed it back: it must be
    fenced, and its token is one above the old holder's.
    """
    store = LandedThenConflict(lease_key("ips", "2024-02"))

    async def scenario() -> Leases:
        expired = Lease(owner=FAR, token=7, expires=1.0)
        await MemoryStore.write(store, lease_key("ips", "2024-02"), expired.to_json())
        leases = Leases(store, "20260101T000000Z-abcdef")
        assert await leases.acquire_many(MONTHS) == dict.fromkeys(MONTHS, True)
        return leases

    leases = asyncio.run(scenario())
    assert store.key is None, "the answer was never lost"
    assert ("ips", "2024-02") in leases.seized
    assert ("ips", "2024-02") in leases.taken_over
    assert leases.token(("ips", "2024-02")) == 8  # one above the old holder's, not two


def test_a_failed_lease_write_leaves_the_others_recorded_and_released_at_the_end() -> None:
    """The second of three lease writes fails: the others are held, and handed back.

    The error is raised; release_all releases the two taken, so no month stays blocked
    until its lease expires.
    """
    store = MemoryStore()
    store.fail_next("_leases/ips/2024-02*", methods=("write",), error=TransientStorageError("x"))

    async def scenario() -> None:
        leases = Leases(store, "20260101T000000Z-abcdef")
        try:
            await leases.acquire_many(MONTHS)
        except TransientStorageError:
            pass
        else:
            raise AssertionError("the failed write was not raised")
        assert set(leases.blocks()) == {("ips", "2024-01"), ("ips", "2024-03")}
        await leases.release_all()
        assert leases.blocks() == []

    asyncio.run(scenario())
    for feed, month in (("ips", "2024-01"), ("ips", "2024-03")):
        lease = Lease.from_json(store.snapshot()[lease_key(feed, month)])
        assert lease.released, month
    assert lease_key("ips", "2024-02") not in store.snapshot()
