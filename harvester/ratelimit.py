"""An adaptive request-rate limiter shared by every feed.

It paces requests one slot at a time (a GCRA-style token bucket of depth one: no
bursts) at a rate that starts at the configured ceiling. A 429 means the API's real
allowance is lower than ours, so the rate drops multiplicatively (at most once per
``cooldown`` so that a volley of 429s from one moment counts once) and every request
waits out the server's ``Retry-After``. While no 429 arrives, the rate climbs back
linearly towards the ceiling. The clock and the sleep are injected.

aiolimiter's leaky bucket has a fixed rate; this one must change its rate while it is
in use, which is why it is written here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class AdaptiveRateLimiter:
    """Pace requests at an adaptive rate no higher than ``max_rate`` per second.

    Use as ``async with limiter:`` around each request, then report the outcome with
    :meth:`on_throttled` or :meth:`on_success`.
    """

    def __init__(
        self,
        max_rate: float,
        *,
        min_rate: float | None = None,
        decrease: float = 0.75,
        recovery: float = 0.02,
        cooldown: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be positive")
        self.max_rate = max_rate
        self.min_rate = min_rate if min_rate is not None else min(max_rate, 0.1)
        self.rate = max_rate
        self._decrease = decrease
        self._recovery = recovery  # fraction of max_rate regained per second
        self._cooldown = cooldown
        self._clock = clock
        self._sleep = sleep
        self._next = clock()
        self._last_change = clock() - cooldown
        self.throttles = 0

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        now = self._clock()
        self._recover(now)
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        if slot > now:
            await self._sleep(slot - now)

    def _recover(self, now: float) -> None:
        elapsed = now - self._last_change
        if self.rate < self.max_rate and elapsed > self._cooldown:
            gained = self.max_rate * self._recovery * (elapsed - self._cooldown)
            self.rate = min(self.max_rate, self.rate + gained)
            self._last_change = now - self._cooldown

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429 arrived: slow down, and hold everyone back for ``retry_after``."""
        now = self._clock()
        self.throttles += 1
        if now - self._last_change >= self._cooldown:
            self.rate = max(self.min_rate, self.rate * self._decrease)
            self._last_change = now
        if retry_after:
            self._next = max(self._next, now + retry_after)

    def on_success(self) -> None:
        """A request went through; let the rate recover with time."""
        self._recover(self._clock())

    async def __aenter__(self) -> AdaptiveRateLimiter:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
