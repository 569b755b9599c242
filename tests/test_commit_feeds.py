"""Feeds commit side by side: one that fails for good does not cut another short."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester import api
from harvester.errors import StorageFull
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
