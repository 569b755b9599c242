"""Run the harvester in-process against a simulator, the way the CLI does."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from harvester import api
from harvester.report import RunResult

SIM_KEY = "sim-test-key-5f2c9a"


async def _fast_sleep(seconds: float) -> None:
    # Retries and Retry-After are honoured in order, but tests need not wait for real.
    await asyncio.sleep(min(seconds, 0.01))


def harvest(
    url: str,
    out: str,
    *,
    key: str = SIM_KEY,
    fast: bool = True,
    now: datetime | None = None,
    **options: Any,
) -> RunResult:
    """Harvest into ``out`` from the simulator at ``url``; return the run's result."""
    merged = {
        "after": "2024-01-01",
        "before": "2024-01-04",
        "out": out,
        "base_url": url,
        "rate": 1000,
        "concurrency": 8,
        **options,
    }
    config = api.make_config(env={}, now=now, **merged)
    sleep = _fast_sleep if fast else asyncio.sleep
    return asyncio.run(api.aharvest(config, api_key=key, sleep=sleep))


def forget(out: str, feed: str, start: datetime) -> None:
    """Make the window of ``feed`` starting at ``start`` not complete, as a repair would.

    The partition drops it first, then the head is recomputed from the partition.
    """
    from harvester.manifest.io import Manifest
    from harvester.manifest.model import month_of
    from harvester.storage import open_store

    async def go() -> None:
        store = open_store(out)
        try:
            manifest = Manifest(store)
            epoch = int(start.timestamp())
            month = month_of(epoch)
            done = await manifest.update_partition(
                feed, month, lambda p: p.with_changes(drop_windows=[epoch]), token=None
            )
            assert done.version is not None
            version = done.version
            await manifest.update_head(
                lambda head: head.with_partition(done.part, version)  # type: ignore[union-attr]
            )
        finally:
            await store.close()

    asyncio.run(go())
