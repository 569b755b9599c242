"""Logging set-up: structlog events, JSON off a TTY, a console view on one.

Only the CLI calls :func:`configure`; library modules just ``structlog.get_logger()``.
Every event passes :func:`scrub` last, which removes any known secret from every
value, so even a careless ``log.info(..., url=...)`` cannot leak the API key.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog

from harvester.secret import redact

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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # aiohttp/boto loggers go through stdlib logging; keep them quiet and scrubbed.
    logging.basicConfig(
        level=logging.WARNING, stream=stream, format="%(levelname)s %(name)s %(message)s"
    )
