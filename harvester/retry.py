"""Retry policy as data: what is transient, how long to wait, when to give up.

Transient means :class:`~harvester.errors.TransientError` (connection errors,
timeouts, 408, 429, 5xx, truncated or non-JSON bodies) and
:class:`~harvester.errors.TransientStorageError`. Nothing else is retried. Waits grow
exponentially with jitter and honour a server's ``Retry-After`` when it asks for
longer. Retries stop after ``attempts`` tries or ``timeout`` seconds, whichever is
first. The sleep is injected, so tests need not really wait.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from harvester.errors import RateLimited, TransientError, TransientStorageError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[BaseException, int, float], None]

TRANSIENT: tuple[type[BaseException], ...] = (TransientError, TransientStorageError)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounds and pacing of retries for one operation."""

    attempts: int = 8
    timeout: float = 300.0
    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.5
    on: tuple[type[BaseException], ...] = TRANSIENT

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout <= 0 or self.initial < 0 or self.maximum < 0:
            raise ValueError("retry policy needs attempts >= 1 and positive times")


class _Wait(tenacity.wait.wait_base):
    """Exponential backoff with jitter, stretched to a server's Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=policy.initial, max=policy.maximum, jitter=policy.jitter
        )
        self._maximum = max(policy.maximum, 0.0)

    def __call__(self, state: tenacity.RetryCallState) -> float:
        delay = float(self._backoff(state))
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            # The server knows its own window better than our guess; cap it so a
            # bogus header cannot park a worker for an hour.
            delay = max(delay, min(error.retry_after, max(self._maximum, 60.0)))
        return delay


async def call_with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """Run ``operation`` until it succeeds, fails for good, or the policy runs out.

    The last error is re-raised as it was; ``on_retry(error, attempt, delay)`` is
    called before each wait (for counting and logging).
    """
    started = time.monotonic()
    try:
        # Nearly every call succeeds at once; it should not pay for building the retry
        # machinery, once a page.
        return await operation()
    except policy.on as error:
        first: list[BaseException] = [error]

    async def replaying() -> T:
        # tenacity's first attempt replays the failure already seen, so attempts,
        # waits and the on_retry count are exactly as if tenacity had made it.
        if first:
            raise first.pop()
        return await operation()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry and state.outcome is not None and state.next_action is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(error, state.attempt_number, state.next_action.sleep)

    left = max(0.0, policy.timeout - (time.monotonic() - started))
    retrying = tenacity.AsyncRetrying(
        sleep=sleep,
        stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_after_delay(left),
        wait=_Wait(policy),
        retry=tenacity.retry_if_exception_type(policy.on),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await replaying()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
