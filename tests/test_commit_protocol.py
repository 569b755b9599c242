"""The commit protocol on a store with atomic compare-and-set; what a no-op run costs.

Lost answers, interleaved writers and concurrent shards against the double, and the
store calls of a nightly run that has nothing to do, on a short and a long history.

moto checks conditions without a lock, so it cannot show that a broken compare-and-set
loses an update; :class:`memstore.MemoryStore` can. Store calls are counted through the
store interface (``MemoryStore.calls``), not timed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from harvester import api
from harvester.intervals import Spans
from harvester.manifest.io import HEAD_KEY, partition_key
from harvester.manifest.model import Head, Partition, WindowRecord, month_of, months_between
from harvester.sim.server import SimulatorThread
from harvester.status import collect_status
from harvester.verify import verify

from harvesting import SIM_KEY, _fast_sleep
from lakecheck import assert_lake_exact
from memstore import MemoryStore

START, END = datetime(2024, 1, 29, tzinfo=UTC), datetime(2024, 2, 4, tzinfo=UTC)
FEEDS = ["ips", "domains", "urls"]


def config(url: str, **options: Any) -> Any:
    merged = {
        "after": START.date().isoformat(),
        "before": END.date().isoformat(),
        "out": "/unused/the-store-is-given",
        "base_url": url,
        "feeds": ",".join(FEEDS),
        "confidence": 0,
        "severity": 0,
        "rate": 1000,
        "commit_every": 0.05,
        **options,
    }
    return api.make_config(env={}, **merged)


def harvest(store: MemoryStore, url: str, **options: Any) -> Any:
    return api.aharvest(config(url, **options), api_key=SIM_KEY, store=store, sleep=_fast_sleep)


def dump(store: MemoryStore, folder: Path) -> str:
    """The store's objects as files, for DuckDB to read."""
    for key, data in store.snapshot().items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(folder)


def truth(server: SimulatorThread) -> dict[str, list[Any]]:
    return {f: server.dataset.truth(f, START, END, confidence=0, severity=0) for f in FEEDS}


def assert_manifest_agrees(store: MemoryStore) -> None:
    """The head says exactly what the partitions say, and each file's rows are there."""
    objects = store.snapshot()
    head = Head.from_json(orjson.loads(objects[HEAD_KEY]))
    for feed in FEEDS:
        state = head.feed(feed)
        covered = Spans()
        rows = 0
        for month in months_between(int(START.timestamp()), int(END.timestamp())):
            part = Partition.from_json(orjson.loads(objects[partition_key(feed, month)]))
            covered = covered | part.complete()
            rows += part.rows
            assert state.months[month].rows == part.rows
            for record in part.files.values():
                assert record.key in objects, record.key
        assert state.covered == covered == Spans.one(int(START.timestamp()), int(END.timestamp()))
        assert state.rows == rows


def test_lost_answers_and_foreign_writes_leave_an_exact_lake_and_a_true_manifest(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Writes applied but answered with an error, and writes beaten by another writer."""
    store = MemoryStore()
    store.lose_next_response("_manifest/_head.json")
    store.lose_next_response("_manifest/ips/*")
    store.conflict_next("_manifest/_head.json")
    store.conflict_next("_manifest/domains/*")
    store.lose_next_response("urls/dt=2024-01-30/*", methods=("commit", "write"))
    result = asyncio.run(harvest(store, sim.url))
    assert store.armed() == 0, "every fault fired"
    # the lost day-file answer fails its window this run (the file is recognised next run)
    again = asyncio.run(harvest(store, sim.url))
    assert again.ok, again.failures
    assert result.feeds["ips"].done + result.feeds["domains"].done == 12
    assert_lake_exact(dump(store, tmp_path), truth(sim))
    assert_manifest_agrees(store)


def test_shards_committing_at_once_lose_no_update(sim: SimulatorThread, tmp_path: Path) -> None:
    """Four shards in one process commit to one head and lake at once: nothing is lost."""
    store = MemoryStore()
    for _ in range(6):
        store.conflict_next("_manifest/_head.json")

    async def all_shards() -> list[Any]:
        return list(
            await asyncio.gather(*(harvest(store, sim.url, shard=f"{i}/4") for i in range(4)))
        )

    results = asyncio.run(all_shards())
    assert all(r.ok for r in results)
    assert sum(s.done for r in results for s in r.feeds.values()) == 6 * len(FEEDS)
    assert store.conflicts > 0  # the head was contended for real
    assert_lake_exact(dump(store, tmp_path), truth(sim))
    assert_manifest_agrees(store)
    head = Head.from_json(orjson.loads(store.snapshot()[HEAD_KEY]))
    assert set(head.shards) == {f"{i}/4" for i in range(4)}


def synthetic_lake(
    store: MemoryStore, *, feeds: list[str], days: int, end: datetime, fingerprint: str
) -> None:
    """A lake of ``days`` days of 1h windows (manifest only: a no-op run reads no data)."""
    step = 3600
    first = int((end - timedelta(days=days)).timestamp())
    last = int(end.timestamp())

    async def build() -> None:
        head = Head(table_format="hive", window=step)
        for feed in feeds:
            for month in months_between(first, last):
                records = [
                    WindowRecord(
                        start=w,
                        end=w + step,
                        fingerprint=fingerprint,
                        rows=3,
                        run_id="run-old",
                        completed_at=w,
                    )
                    for w in range(max(first, month_start(month)), last, step)
                    if month_of(w) == month
                ]
                part = Partition(feed=feed, month=month).with_changes(windows=records)
                info = await store.write(partition_key(feed, month), orjson.dumps(part.to_json()))
                head = head.with_partition(part, info.version)
        await store.write(HEAD_KEY, orjson.dumps(head.to_json()))

    asyncio.run(build())


def month_start(month: str) -> int:
    return int(datetime(int(month[:4]), int(month[5:]), 1, tzinfo=UTC).timestamp())


def nightly_calls(days: int) -> tuple[int, int]:
    """Store calls of a nightly no-op run, and of status, on a lake of ``days`` days."""
    end = datetime(2025, 6, 1, tzinfo=UTC)
    nightly = config(
        "http://127.0.0.1:9",  # nothing listens: a no-op run must not call the API
        after=None,
        feeds="ips,urls",
        window="1h",
        since_last=True,
        before="now",
        lag="1h",
        now=end + timedelta(minutes=30),
    )
    store = MemoryStore()
    synthetic_lake(
        store, feeds=["ips", "urls"], days=days, end=end, fingerprint=nightly.query.fingerprint
    )
    store.calls.clear()
    result = asyncio.run(api.aharvest(nightly, api_key=SIM_KEY, store=store, sleep=_fast_sleep))
    assert result.ok and all(s.windows == 0 for s in result.feeds.values())
    run_calls = sum(store.calls.values())
    store.calls.clear()
    status = asyncio.run(collect_status(store))
    assert status["feeds"]["ips"]["complete_days"] >= days - 1
    return run_calls, sum(store.calls.values())


def test_a_nightly_no_op_and_status_cost_the_same_on_a_day_and_on_three_years() -> None:
    """Store calls of a no-op nightly run and of status do not grow with the history."""
    short_run, short_status = nightly_calls(days=2)
    long_run, long_status = nightly_calls(days=3 * 365)
    assert short_status == long_status == 1  # the head: one read
    assert short_run == long_run <= 2


def test_verify_costs_one_listing_a_feed_and_a_read_a_month(sim: SimulatorThread) -> None:
    """`verify` lists each feed once, reads the head and each month, and no data file."""
    store = MemoryStore()
    assert asyncio.run(harvest(store, sim.url)).ok  # 2024-01-29 .. 02-04: two months
    store.calls.clear()
    report = asyncio.run(verify(store))
    assert report.ok and set(report.feeds) == set(FEEDS)
    assert store.calls["list"] == len(FEEDS)
    assert store.calls["read"] == 2 + 2 * len(FEEDS)  # each (feed, month), the head twice
    assert store.calls["fetch"] == 0  # sizes come from the listing; --deep reads footers
    assert store.calls["write"] == 1  # the result, into the head (read again to do so)
