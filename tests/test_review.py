"""Findings of an adversarial review of the group-commit design, each as a test.

Every test here failed before its fix (or is marked ``xfail(strict=True)`` with the
reason when the fix is a design question left to the lead).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester import api
from harvester.leases import Lease, Owner, lease_key
from lakecheck import assert_lake_exact

from harvesting import SIM_KEY, _fast_sleep


def at(day: str) -> datetime:
    """Midnight UTC of ``day``."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def write_lease(out: Path, feed: str, month: str, *, expires: float, host: str) -> Owner:
    """A lease of ``(feed, month)`` written by hand, held by a run on ``host``."""
    owner = Owner(run_id="20240101T000000Z-far0ff", host=host, pid=4242, started=None)
    path = out / lease_key(feed, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Lease(owner=owner, token=7, expires=expires).to_json())
    return owner


# --- 1. windows longer than a day that end in the next month ------------------------------


def test_a_week_window_ending_in_a_held_month_does_not_need_that_months_lease(
    sim: Any, tmp_path: Path
) -> None:
    """The window [2024-02-29, 2024-03-07) starts in February: it is February's alone.

    A run over February's weekly windows must not need March's lease; when another
    (live) run holds March, it used to give the span back and take it again forever.
    """
    out = tmp_path / "lake"
    write_lease(out, "ips", "2024-03", expires=time.time() + 3600, host="harvester-far")
    config = api.make_config(
        env={},
        after="2024-02-01",  # a Thursday: on the epoch-anchored 7-day grid
        before="2024-03-07",
        window="7d",
        feeds="ips",
        out=str(out),
        base_url=sim.url,
        rate=1000,
        concurrency=2,
    )

    async def go() -> Any:
        return await asyncio.wait_for(
            api.aharvest(config, api_key=SIM_KEY, sleep=_fast_sleep), timeout=30
        )

    result = asyncio.run(go())
    assert not result.failures and not result.held_by, result
    truth = sim.dataset.truth("ips", at("2024-02-01"), at("2024-03-07"))
    assert_lake_exact(str(out), {"ips": truth})
