"""Log lines: written in bursts, one per turn of the event loop, and always in order."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from harvester import logs


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    """A JSON log stream; structlog and the root logger are put back afterwards."""
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    level = logging.getLogger().level
    out = CountingStream()
    logs.configure(level="info", stream=out, json=True)
    yield out
    structlog.configure(**saved)
    logging.getLogger().handlers = handlers
    logging.getLogger().setLevel(level)


def events(stream: io.StringIO) -> list[str]:
    return [orjson.loads(line)["event"] for line in stream.getvalue().splitlines()]


def test_lines_of_one_loop_turn_are_written_together_at_its_end(stream: CountingStream) -> None:
    """A thousand events logged in one turn: one write, after the turn, every line there."""
    log = structlog.get_logger("harvester")

    async def burst() -> tuple[int, int]:
        for n in range(1000):
            log.info("window.done", n=n)
        during = stream.writes
        await asyncio.sleep(0)  # the turn ends
        return during, stream.writes

    during, after = asyncio.run(burst())
    assert (during, after) == (0, 1)
    assert [orjson.loads(x)["n"] for x in stream.getvalue().splitlines()] == list(range(1000))


def test_outside_an_event_loop_a_line_is_written_at_once(stream: CountingStream) -> None:
    """No loop to wait for: the line is there when the call returns."""
    structlog.get_logger("harvester").info("run.start")
    assert events(stream) == ["run.start"]


def test_a_third_party_record_comes_after_the_lines_logged_before_it(
    stream: CountingStream,
) -> None:
    """A warning of botocore's, logged after two events of ours in one turn, is third."""

    async def mixed() -> None:
        log = structlog.get_logger("harvester")
        log.info("first")
        log.info("second")
        logging.getLogger("botocore").warning("third")

    asyncio.run(mixed())
    assert events(stream) == ["first", "second", "third"]


def test_a_loop_stopped_before_its_flush_does_not_hold_up_another_loops_lines(
    stream: CountingStream,
) -> None:
    """A loop that stops in the turn it logged: the next loop's lines still go out."""
    log = structlog.get_logger("harvester")
    first = asyncio.new_event_loop()
    first.call_soon(lambda: log.info("on the first loop"))
    first.call_soon(first.stop)
    first.run_forever()  # stops before the flush it scheduled runs
    first.close()

    async def later() -> None:
        log.info("on the second loop")
        await asyncio.sleep(0)

    asyncio.run(later())
    assert events(stream) == ["on the first loop", "on the second loop"]
