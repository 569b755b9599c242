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
