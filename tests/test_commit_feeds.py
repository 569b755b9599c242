"""Feeds commit side by side: one that fails for good does not cut another short."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester import api
from harvester.committer import batches
from harvester.errors import StorageError, StorageFull
from harvester.manifest.io import Manifest
from harvester.storage import Expect, LocalStore, ObjectInfo

from harvesting import SIM_KEY, _fast_sleep
from lakecheck import assert_lake_exact

COMMON = {"feeds": "ips,domains", "after": "2024-01-01", "before": "2024-01-04", "window": "1d"}


class FullFor(LocalStore):
    """A local lake whose disk is full for one feed's data files (and only those)."""

    def __init__(self, root: Path, feed: str) -> None:
        super().__init__(root)
        self.feed = feed

    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        if key.startswith(f"{self.feed}/"):
            raise StorageFull(f"injected: no space left for {key}")
        return await super().commit(staged, key, expect=expect)

    async def write_many(
        self, items: Sequence[tuple[str, bytes, Expect]]
    ) -> list[ObjectInfo | StorageError]:
        ours = [item for item in items if not item[0].startswith(f"{self.feed}/")]
        written = iter(await super().write_many(ours))
        return [
            StorageFull(f"injected: no space left for {key}")
            if key.startswith(f"{self.feed}/")
            else next(written)
            for key, _, _ in items
        ]


def harvest(url: str, out: Path, store: LocalStore | None = None) -> Any:
    config = api.make_config(env={}, out=str(out), base_url=url, rate=1000, **COMMON)
    return asyncio.run(api.aharvest(config, api_key=SIM_KEY, store=store, sleep=_fast_sleep))


def epoch(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


def recorded(out: Path, feed: str) -> set[int]:
    """The windows the manifest records complete for ``feed`` in January 2024."""

    async def go() -> set[int]:
        current = await Manifest(LocalStore(out)).read_partition(feed, "2024-01")
        return set(current.part.windows)

    return asyncio.run(go())


def test_a_feed_out_of_space_leaves_the_other_feeds_commit_whole(sim: Any, tmp_path: Path) -> None:
    """The ips files cannot be written (a fatal error); domains, beside it, is recorded.

    The run still stops with the fatal error, once both feeds have settled; a rerun
    on a healthy disk completes ips, and the lake holds every row exactly once.
    """
    out = tmp_path / "lake"
    with pytest.raises(StorageFull):
        harvest(sim.url, out, FullFor(out, "ips"))
    days = {epoch(d) for d in ("2024-01-01", "2024-01-02", "2024-01-03")}
    assert recorded(out, "domains") == days
    assert recorded(out, "ips") == set()
    assert not list(out.glob("ips/dt=*/*.parquet"))
    again = harvest(sim.url, out)
    assert not again.failures
    truth = {
        feed: sim.dataset.truth(
            feed, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)
        )
        for feed in ("ips", "domains")
    }
    assert_lake_exact(str(out), truth)
    assert recorded(out, "ips") == days


class CountingStore(LocalStore):
    """A local lake that counts the data files committed to it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data_files = 0

    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        if "/dt=" in key:
            self.data_files += 1
        return await super().commit(staged, key, expect=expect)

    async def write_many(
        self, items: Sequence[tuple[str, bytes, Expect]]
    ) -> list[ObjectInfo | StorageError]:
        self.data_files += sum("/dt=" in key for key, _, _ in items)
        return await super().write_many(items)


def test_days_without_records_get_no_file_and_are_still_complete(
    make_sim: Any, tmp_path: Path
) -> None:
    """A filtered sparse range: a file for each feed-day with records, none for the rest."""
    from harvester.sim.data import DatasetSpec

    server = make_sim(dataset=DatasetSpec(seed=4, rows_per_day=20))
    options = {
        "feeds": "ips,domains",
        "after": "2024-01-01",
        "before": "2024-03-01",
        "ioc": "pe-packed-upx",
        "confidence": 0,
        "severity": 0,
    }
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    truth = {
        feed: server.dataset.truth(
            feed, start, end, confidence=0, severity=0, ioc="pe-packed-upx"
        )
        for feed in ("ips", "domains")
    }
    with_records = {(f, i["timestamp"][:10]) for f, items in truth.items() for i in items}
    assert 0 < len(with_records) < 2 * 60  # some feed-days hold records, some none

    def run(store: LocalStore | None = None, **more: Any) -> Any:
        config = api.make_config(
            env={}, out=str(tmp_path), base_url=server.url, rate=1000, **options, **more
        )
        return asyncio.run(api.aharvest(config, api_key=SIM_KEY, store=store, sleep=_fast_sleep))

    store = CountingStore(tmp_path)
    first = run(store)
    assert first.ok
    assert store.data_files == len(with_records)  # no file written for an empty day
    files = {(p.parts[-3], p.parts[-2][3:]) for p in tmp_path.glob("*/dt=*/*.parquet")}
    assert files == with_records
    assert_lake_exact(str(tmp_path), truth)
    again = run()
    assert again.ok and sum(f.counters.requests for f in again.feeds.values()) == 0  # all done
    forced = run(force=True)
    assert forced.ok
    assert_lake_exact(str(tmp_path), truth)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=250), max_size=40),
    limit=st.integers(min_value=1, max_value=300),
)
def test_small_days_are_grouped_in_order_and_a_big_day_goes_alone(
    sizes: list[int], limit: int
) -> None:
    """Groups keep the days' order, stay within the limit unless a day alone exceeds it."""
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(len(sizes))]
    rows = dict(zip(days, sizes, strict=True))
    groups = batches(days, rows.__getitem__, limit=limit)
    assert [d for group in groups for d in group] == days
    assert all(group for group in groups)
    for group in groups:
        total = sum(rows[d] for d in group)
        assert total <= limit or len(group) == 1
    for group, after in itertools.pairwise(groups):
        # greedy: a group ends only where the next day would not have fitted
        assert sum(rows[d] for d in group) + rows[after[0]] > limit
