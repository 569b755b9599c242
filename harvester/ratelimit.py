"""An adaptive request-rate limiter shared by every feed.

It paces requests one slot at a time (a GCRA-style token bucket of depth one: no
bursts) at a rate that starts at the configured ceiling. The API's real allowance is
unknown, so it is learnt from the API itself:

* A 429 means we are above the allowance. The requests that *succeeded* recently are
  the best estimate of it, so the rate drops at once to just under that (or by
  ``decrease`` when nothing got through); a volley of 429s within ``cooldown`` counts
  once. "Recently" is the last second, but never before the previous 429: a server's
  burst allowance lets more through at the start than it sustains, and counting
  those would set the rate above the allowance for a whole second more.
  The throttled request itself waits out the server's ``Retry-After`` (the retry
  policy does that); everyone else is held back too only when the server asks for a
  long pause (more than ``hold_after`` seconds). Holding every worker for a routine
  ``Retry-After: 1`` would cost a second of throughput per 429 for nothing, since the
  lower rate already relieves the server.
* While no 429 arrives, the rate creeps up by ``probe`` of itself per second, towards
  the ceiling, to find out whether the allowance has grown. Creeping, not jumping,
  keeps the 429s this costs to a handful per probe.

The clock and the sleep are injected. aiolimiter's leaky bucket has a fixed rate; this
one must change its rate while in use, which is why it is written here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

WINDOW = 1.0  # seconds of successes that estimate the allowance


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
        decrease: float = 0.7,
        margin: float = 0.95,
        probe: float = 0.003,
        cooldown: float = 0.25,
        hold_after: float = 2.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be positive")
        self.max_rate = max_rate
        self.min_rate = min_rate if min_rate is not None else min(max_rate, 0.1)
        self.rate = max_rate
        self.throttles = 0
        self._decrease = decrease
        self._margin = margin
        self._probe = probe
        self._cooldown = cooldown
        self._hold_after = hold_after
        self._clock = clock
        self._sleep = sleep
        self._next = clock()
        self._last_throttle = -float("inf")
        self._last_growth = clock()
        self._successes: deque[float] = deque()
        self._generation = 0

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        while True:
            now = self._clock()
            self._grow(now)
            generation = self._generation
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate
            if slot > now:
                await self._sleep(slot - now)
            if generation == self._generation:
                return
            # A 429 came while we waited: our slot was booked at the old pace, so queue
            # again at the new one instead of joining the volley.

    def _grow(self, now: float) -> None:
        elapsed = now - self._last_growth
        self._last_growth = now
        if self.rate < self.max_rate and now - self._last_throttle > self._cooldown:
            self.rate = min(self.max_rate, self.rate * (1.0 + self._probe * elapsed))

    def _forget_old(self, now: float) -> None:
        while self._successes and self._successes[0] < now - WINDOW:
            self._successes.popleft()

    def _estimate(self, now: float) -> float:
        """Successes per second since the last 429, over at most the last ``WINDOW``."""
        self._forget_old(now)
        since = max(now - WINDOW, self._last_throttle)
        count = 0
        for stamp in reversed(self._successes):
            if stamp <= since:
                break
            count += 1
        return count / (now - since)

    def on_throttled(self, retry_after: float | None = None) -> None:
        """A 429 arrived: drop below the allowance; on a long ``retry_after``, hold everyone."""
        now = self._clock()
        self.throttles += 1
        if now - self._last_throttle >= self._cooldown:
            estimate = self._estimate(now) * self._margin
            # What got through is the allowance; without a measurement, back off blindly.
            lowered = min(self.rate, estimate) if estimate > 0 else self.rate * self._decrease
            self.rate = max(self.min_rate, lowered)
            self._last_throttle = now
            self._generation += 1
            self._next = now + 1.0 / self.rate
        if retry_after and retry_after > self._hold_after:
            self._next = max(self._next, now + retry_after)

    def on_success(self) -> None:
        """A request went through: it counts towards the estimate of the allowance."""
        now = self._clock()
        self._successes.append(now)
        self._forget_old(now)

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
