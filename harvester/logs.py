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

import io
import logging
import sys
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
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
