"""Logging set-up: structlog events, JSON off a TTY, a console view on one.

Only the CLI calls :func:`configure`; library modules just ``structlog.get_logger()``.
Every event passes :func:`scrub` last, which removes any known secret from every
value, so even a careless ``log.info(..., url=...)`` cannot leak the API key.

Third-party libraries (aiohttp, botocore, urllib3) log through the standard library.
Their records go through structlog's ``ProcessorFormatter`` with the same processors,
so they come out as JSON lines (or console lines) like ours, scrubbed, instead of
plain text in the middle of a JSON stream.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog

from harvester.secret import RedactFilter, guard_loggers, redact

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Redact (a structlog processor)  secrets from every string value."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


def _dumps(event: dict[str, Any], **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


class _CurrentStderr(io.TextIOBase):
    """``sys.stderr`` as it is at each write, not as it was at configure time.

    rich's live progress display swaps ``sys.stderr`` for a proxy that prints above
    the display; writing through this follows the swap, so log lines do not garble it.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class BurstWriter:
    """The last step of every event: its line written to ``stream``, in bursts.

    A commit logs an event per window: thousands for a sparse year. Written and flushed
    one by one, each line was a system call on the event loop, and with the commit's
    threads busy each call also waited to take the GIL back: a sparse year's
    ``window.done`` lines cost a third of the event loop's time. Lines logged during one
    turn of the event loop are written together at the end of that turn; outside a
    running loop, or from another thread, at once. A ``kill -9`` loses at most the
    lines of the turn it lands in; a loop stopped before its turn ended leaves its
    lines to the next line logged, or to the process's exit.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None
        """The loop a flush waits on: a line logged on another loop schedules its own."""
        self._lock = threading.Lock()
        atexit.register(self._flush_at_exit)

    def msg(self, message: str) -> None:
        """Write ``message`` as a line, now or at the end of this turn of the loop."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(message)
            if loop is not None:
                if self._scheduled is not loop or loop.is_closed():
                    self._scheduled = loop
                    loop.call_soon(self.flush)
                return
        self.flush()

    # structlog calls the method named after the level; every level is a line.
    debug = info = warning = warn = error = err = critical = fatal = exception = log = msg

    def _flush_at_exit(self) -> None:
        # A loop closed before its turn ended loses no line; a stream closed by then
        # (a test's) has nobody left to read it.
        with contextlib.suppress(ValueError, OSError):
            self.flush()

    def flush(self) -> None:
        """Write every pending line, in order."""
        with self._lock:
            lines, self._pending, self._scheduled = self._pending, [], None
            if lines:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()


class _InOrderHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A third-party record's line, after every line of ours logged before it."""

    def __init__(self, stream: TextIO, writer: BurstWriter) -> None:
        super().__init__(stream)
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        self._writer.flush()
        super().emit(record)


def configure(
    *, level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Route structlog events to ``stream`` (stderr), as JSON unless it is a TTY."""
    stream = stream or cast(TextIO, _CurrentStderr())
    as_json = not stream.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    writer = BurstWriter(stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    handler = _InOrderHandler(stream, writer)
    handler.addFilter(RedactFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrub,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Libraries are quiet unless something is wrong; at debug, their info lines too.
    root.setLevel(logging.INFO if level == "debug" else logging.WARNING)
    guard_loggers()
