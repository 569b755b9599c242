"""The adaptive rate limiter, on a fake clock against a simulated token-bucket server."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from harvester.ratelimit import AdaptiveRateLimiter


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class Bucket:
    """The server side: R requests per second with a burst of R, 429 beyond."""

    def __init__(self, rate: float, time: FakeTime) -> None:
        self.rate, self.tokens, self.time, self.last = rate, rate, time, 0.0

    def take(self) -> bool:
        now = self.time.now
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def drive(allowance: float, ceiling: float, seconds: float) -> tuple[float, float, int]:
    """Run requests back to back for ``seconds``; return (ok/s in the last half, 429 share, n)."""
    time = FakeTime()
    limiter = AdaptiveRateLimiter(ceiling, clock=time.clock, sleep=time.sleep)
    server = Bucket(allowance, time)
    log: list[tuple[float, bool]] = []

    async def go() -> None:
        while time.now < seconds:
            async with limiter:
                ok = server.take()
            log.append((time.now, ok))
            if ok:
                limiter.on_success()
            else:
                limiter.on_throttled(1.0)
            time.now += 0.001  # the request itself takes a millisecond

    asyncio.run(go())
    late = [ok for t, ok in log if t >= seconds / 2]
    throttled = sum(1 for _, ok in log if not ok)
    return sum(late) / (seconds / 2), throttled / len(log), len(log)


@pytest.mark.parametrize(("allowance", "ceiling"), [(40, 1000), (40, 60), (5, 500), (200, 10_000)])
def test_learns_an_unknown_allowance_quickly_and_stays_just_under(
    allowance: float, ceiling: float
) -> None:
    """Told a ceiling far above the API's allowance, it sustains >= 0.9 of it with <= 2% 429s."""
    sustained, share_429, _ = drive(allowance, ceiling, seconds=120)
    assert sustained >= 0.9 * allowance
    assert share_429 <= 0.02


class VirtualTime:
    """Virtual time for many concurrent callers: it jumps to the next wake-up when all wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), wake))
        await wake

    async def run(self, jobs: list[Coroutine[Any, Any, None]]) -> None:
        tasks = [asyncio.ensure_future(job) for job in jobs]
        while not all(task.done() for task in tasks):
            for _ in range(20):  # let every runnable caller reach its next sleep
                await asyncio.sleep(0)
            if self._sleepers:
                self.now, _, wake = heapq.heappop(self._sleepers)
                wake.set_result(None)
        for task in tasks:
            task.result()


def drive_concurrently(
    allowance: float, ceiling: float, seconds: float, *, callers: int, latency: float
) -> tuple[float, float, int]:
    """``callers`` workers, each request ``latency`` long; return (ok/s late, 429 share, n)."""
    time = VirtualTime()
    limiter = AdaptiveRateLimiter(ceiling, clock=time.clock, sleep=time.sleep)
    server = Bucket(allowance, time)
    log: list[tuple[float, bool]] = []

    async def caller() -> None:
        while time.now < seconds:
            async with limiter:
                ok = server.take()
            await time.sleep(latency)  # the answer comes back a little later
            log.append((time.now, ok))
            if ok:
                limiter.on_success()
            else:
                limiter.on_throttled(1.0)
                await time.sleep(1.0)  # the retry policy honours Retry-After

    asyncio.run(time.run([caller() for _ in range(callers)]))
    late = [ok for t, ok in log if t >= seconds / 2]
    throttled = sum(1 for _, ok in log if not ok)
    return sum(late) / (seconds / 2), throttled / len(log), len(log)


@pytest.mark.parametrize(("allowance", "ceiling"), [(40, 1000), (40, 60), (150, 5000)])
def test_concurrent_callers_learn_the_allowance_within_seconds(
    allowance: float, ceiling: float
) -> None:
    """Eight callers at once, as a harvest runs, over a short run: >= 0.9 R, <= 2% 429s."""
    sustained, share_429, n = drive_concurrently(
        allowance, ceiling, seconds=20, callers=8, latency=0.02
    )
    assert sustained >= 0.9 * allowance, (sustained, share_429, n)
    assert share_429 <= 0.02, (sustained, share_429, n)


def test_a_second_429_ignores_what_the_servers_burst_let_through() -> None:
    """The rate after a repeat 429 is what got through since the first, not the burst too."""
    time = FakeTime()
    limiter = AdaptiveRateLimiter(1000, clock=time.clock, sleep=time.sleep)
    for _ in range(44):  # the server's burst of 40 and 4 refilled tokens, in 0.2 s
        time.now += 0.2 / 44
        limiter.on_success()
    limiter.on_throttled(1.0)
    assert limiter.rate == pytest.approx(44 * 0.95)  # above the real 40/s: more 429s come
    for _ in range(20):  # from then on the server lets 40/s through
        time.now += 1 / 40
        limiter.on_success()
    limiter.on_throttled(1.0)
    assert limiter.rate == pytest.approx(40 * 0.95, rel=0.03)


def test_never_exceeds_the_configured_ceiling() -> None:
    """Below the API's allowance, the configured rate is the limit."""
    sustained, share_429, _ = drive(allowance=1000, ceiling=20, seconds=60)
    assert share_429 == 0
    assert 19 <= sustained <= 20.5


def test_a_long_retry_after_holds_everyone() -> None:
    """A Retry-After of a minute stops every caller; a routine one second does not."""
    time = FakeTime()
    limiter = AdaptiveRateLimiter(10, clock=time.clock, sleep=time.sleep)
    limiter.on_throttled(1.0)
    asyncio.run(limiter.acquire())
    assert time.now < 1.0
    limiter.on_throttled(60.0)
    asyncio.run(limiter.acquire())
    assert time.now >= 60.0
