"""The retry policy: what is retried, how often, how long it waits (fake sleep, no waiting)."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.errors import ConnectionFailed, RateLimited, RequestRejected, ServerError
from harvester.retry import RetryPolicy, call_with_retry


def failing(outcomes: list[BaseException | str]) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An operation that raises or returns the given outcomes in turn, and its call count."""
    calls = [0]

    async def operation() -> str:
        outcome = outcomes[calls[0]]
        calls[0] += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return operation, calls


def run(operation: Callable[[], Awaitable[str]], policy: RetryPolicy) -> tuple[str, list, list]:
    """Call with retries under a fake sleep; return (result, sleeps, on_retry calls)."""
    sleeps: list[float] = []
    retries: list[tuple[str, int]] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def on_retry(error: BaseException, attempt: int, delay: float) -> None:
        retries.append((type(error).__name__, attempt))

    result = asyncio.run(call_with_retry(operation, policy, sleep=sleep, on_retry=on_retry))
    return result, sleeps, retries


def test_a_first_success_neither_waits_nor_counts_a_retry() -> None:
    """The usual call: one attempt, no sleep, no retry reported."""
    operation, calls = failing(["ok"])
    assert run(operation, RetryPolicy()) == ("ok", [], [])
    assert calls == [1]


def test_transient_failures_are_retried_and_counted() -> None:
    """Two transient failures, then success: three attempts, two waits, two retries."""
    operation, calls = failing([ServerError("503", status=503), ConnectionFailed("reset"), "ok"])
    result, sleeps, retries = run(operation, RetryPolicy(initial=0.5, jitter=0))
    assert result == "ok" and calls == [3]
    assert retries == [("ServerError", 1), ("ConnectionFailed", 2)]
    assert sleeps == [0.5, 1.0]


def test_a_rejected_request_is_not_retried() -> None:
    """A 400 is final: raised after one attempt, nothing slept."""
    operation, calls = failing([RequestRejected("400", status=400), "ok"])
    with pytest.raises(RequestRejected):
        run(operation, RetryPolicy())
    assert calls == [1]


def test_retry_after_stretches_the_wait() -> None:
    """A 429's Retry-After is waited out when it is longer than the backoff."""
    operation, _ = failing([RateLimited("429", retry_after=7.0), "ok"])
    _, sleeps, _ = run(operation, RetryPolicy(initial=0.5, jitter=0))
    assert sleeps == [7.0]


@settings(max_examples=50, deadline=None)
@given(attempts=st.integers(1, 6), failures=st.integers(0, 8))
def test_attempts_bound_the_calls(attempts: int, failures: int) -> None:
    """At most ``attempts`` calls; the last error is raised when they run out."""
    errors = [ServerError(f"5xx #{i}", status=500) for i in range(failures)]
    operation, calls = failing([*errors, "ok"])
    policy = RetryPolicy(attempts=attempts, initial=0.0, jitter=0)
    if failures < attempts:
        assert run(operation, policy)[0] == "ok"
        assert calls == [failures + 1]
    else:
        with pytest.raises(ServerError, match=f"5xx #{attempts - 1}$"):
            run(operation, policy)
        assert calls == [attempts]
