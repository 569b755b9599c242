"""The store double itself: atomic compare-and-set, and fault knobs that do what they say.

Protocol tests can trust the double only if its compare-and-set holds under real
contention, of tasks and of threads.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from harvester.errors import Conflict, TransientStorageError
from harvester.storage import ABSENT, Expect, ObjectInfo, Store

from memstore import MemoryStore

KEY = "_manifest/head.json"


async def increment(store: Store, key: str, *, pause: float = 0.0) -> int:
    """One read-increment-compare-and-set, retried on Conflict; returns the conflicts met."""
    conflicts = 0
    while True:
        blob = await store.read(key)
        value = int(blob.data) if blob else 0
        # hold the read while others write: tasks of this loop, or other threads
        await asyncio.sleep(pause)
        try:
            await store.write(
                key, b"%d" % (value + 1), expect=blob.info.version if blob else ABSENT
            )
        except Conflict:
            conflicts += 1
            continue
        return conflicts


class BlindStore(MemoryStore):
    """A broken double that ignores ``expect``: what the workload must catch."""

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        return await super().write(key, data)


def test_counter_workload_catches_a_store_without_compare_and_set() -> None:
    """The control: without a real condition check, concurrent increments are lost."""

    async def main() -> bytes:
        store = BlindStore()
        await asyncio.gather(*(increment(store, KEY) for _ in range(20)))
        blob = await store.read(KEY)
        assert blob is not None
        return blob.data

    assert int(asyncio.run(main())) < 20


def test_tasks_incrementing_concurrently_end_with_the_exact_count() -> None:
    """50 tasks, each reading the same version before any writes: exactly 50 at the end."""

    async def main() -> tuple[MemoryStore, list[int]]:
        store = MemoryStore()
        conflicts = await asyncio.gather(*(increment(store, KEY) for _ in range(50)))
        return store, conflicts

    store, conflicts = asyncio.run(main())
    assert store.snapshot() == {KEY: b"50"}
    assert sum(conflicts) == store.conflicts > 0, "the tasks really raced"
    assert store.calls["write"] == 50 + sum(conflicts)


def test_threads_incrementing_concurrently_end_with_the_exact_count() -> None:
    """8 threads (each its own event loop) x 25 increments: exactly 200, none lost."""
    store = MemoryStore()
    start = threading.Barrier(8)
    conflicts: list[int] = []

    def worker() -> None:
        start.wait()

        async def run() -> int:
            met = 0
            for _ in range(25):
                met += await increment(store, KEY, pause=0.0005)
            return met

        conflicts.append(asyncio.run(run()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.snapshot() == {KEY: b"200"}
    assert sum(conflicts) > 0, "the threads really raced"


def test_conditional_semantics() -> None:
    """ABSENT creates once; a version replaces only itself; deletes are conditional too."""

    async def main() -> None:
        store = MemoryStore()
        first = await store.write("a", b"1", expect=ABSENT)
        with pytest.raises(Conflict, match="expected absent"):
            await store.write("a", b"x", expect=ABSENT)
        second = await store.write("a", b"2", expect=first.version)
        assert second.version != first.version
        with pytest.raises(Conflict):
            await store.write("a", b"x", expect=first.version)
        with pytest.raises(Conflict, match="missing"):
            await store.write("b", b"x", expect=first.version)
        same = await store.write("a", b"2")
        assert same.version != second.version, "identical bytes are still a new version"
        with pytest.raises(Conflict):
            await store.delete("a", expect=second.version)
        await store.delete("a", expect=same.version)
        with pytest.raises(Conflict):
            await store.delete("a", expect=same.version)
        await store.delete("a")  # a missing key without expect is fine
        assert store.snapshot() == {}

    asyncio.run(main())


def test_lost_response_is_applied_and_its_retry_conflicts() -> None:
    """lose_next_response: the write lands, yet the caller sees a transient error.

    A retry with the same expectation is then a Conflict, and the re-read shows the
    caller's own data.
    """

    async def main() -> None:
        store = MemoryStore()
        base = await store.write(KEY, b"v1")
        store.lose_next_response("_manifest/*")
        await store.write("other", b"o", expect=ABSENT)  # does not match: not lost
        with pytest.raises(TransientStorageError, match="lost response"):
            await store.write(KEY, b"v2", expect=base.version)
        with pytest.raises(Conflict):
            await store.write(KEY, b"v2", expect=base.version)
        blob = await store.read(KEY)
        assert blob is not None
        assert blob.data == b"v2"
        assert store.armed() == 0

    asyncio.run(main())


def test_conflict_next_interleaves_a_foreign_write_before_a_conditional_one() -> None:
    """conflict_next fires on the next conditional mutation only, not on plain writes."""

    async def main() -> None:
        store = MemoryStore()
        base = await store.write(KEY, b"mine")
        store.conflict_next(KEY, data=b"theirs")
        plain = await store.write(KEY, b"mine again")  # unconditional: not the target
        assert store.armed() == 1
        with pytest.raises(Conflict):
            await store.write(KEY, b"lost", expect=plain.version)
        blob = await store.read(KEY)
        assert blob is not None
        assert blob.data == b"theirs"
        assert blob.info.version not in {base.version, plain.version}
        await store.write(KEY, b"won", expect=blob.info.version)  # the re-read wins
        store.conflict_next("new/*")
        with pytest.raises(Conflict):
            await store.write("new/a", b"x", expect=ABSENT)
        assert store.snapshot()["new/a"] == b""

    asyncio.run(main())


def test_fail_next_does_nothing_and_raises() -> None:
    """fail_next: the call raises before it acts; the next call succeeds."""

    async def main() -> None:
        store = MemoryStore()
        store.fail_next(KEY, methods=("write",))
        with pytest.raises(TransientStorageError, match="nothing was done"):
            await store.write(KEY, b"x")
        assert store.snapshot() == {}
        store.fail_next("*", methods=("read",), error=RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            await store.read(KEY)
        await store.write(KEY, b"x")
        assert await store.get_bytes(KEY) == b"x"

    asyncio.run(main())


def test_staging_commit_fetch_list_and_call_counts() -> None:
    """Staged commits, fetch to a file, listing with start_after, and calls per method."""

    async def main() -> None:
        store = MemoryStore()
        try:
            async with store.staging("ips/dt=2024-01-01/part.parquet") as staged:
                staged.write_bytes(b"parquet bytes")
                info = await store.commit(staged, "ips/dt=2024-01-01/part.parquet", expect=ABSENT)
            async with store.staging("x") as staged:
                staged.write_bytes(b"y")
                with pytest.raises(Conflict):
                    await store.commit(staged, "ips/dt=2024-01-01/part.parquet", expect=ABSENT)
            async with store.fetch("ips/dt=2024-01-01/part.parquet") as fetched:
                assert fetched is not None
                path, got = fetched
                assert path.read_bytes() == b"parquet bytes"
                assert got == info
            assert not path.exists()
            async with store.fetch("missing") as nothing:
                assert nothing is None
            for key in ("ips/dt=2024-01-02/p", "ips/.hidden", "ips2/a", "domains/b"):
                await store.write(key, b"k")
            listed = await store.list("ips")
            assert [i.key for i in listed] == [
                "ips/dt=2024-01-01/part.parquet",
                "ips/dt=2024-01-02/p",
            ]
            after = await store.list("", start_after="ips/dt=2024-01-01/part.parquet")
            assert [i.key for i in after] == ["ips/dt=2024-01-02/p", "ips2/a"]
            assert store.calls == {"commit": 2, "fetch": 2, "write": 4, "list": 2}
        finally:
            await store.close()

    asyncio.run(main())
