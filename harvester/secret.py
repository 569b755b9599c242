"""The API key as a value that cannot leak by accident.

:class:`Secret` prints as ``***`` in ``str``, ``repr`` and f-strings; only
:meth:`Secret.reveal` gives the key, and only the HTTP client calls it. Every secret
built is also remembered so :func:`redact` can scrub it from any text (exception
messages from aiohttp include URLs, and with ``--auth query`` the key is in the URL).
The log pipeline runs every event through :func:`redact` as a last line of defence,
and :class:`RedactFilter` does the same for the standard-library loggers of aiohttp,
botocore and urllib3.
"""

from __future__ import annotations

import logging

_KNOWN: set[str] = set()


class Secret:
    """A string that refuses to show itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= 4:
            _KNOWN.add(value)

    def reveal(self) -> str:
        """The real value, for the one place that must send it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


def redact(text: str) -> str:
    """Replace every known secret in ``text`` with ``***``."""
    for value in _KNOWN:
        if value in text:
            text = text.replace(value, "***")
    return text


class RedactFilter(logging.Filter):
    """A :mod:`logging` filter that scrubs every known secret from a record.

    Third-party libraries (aiohttp, botocore, urllib3) log through :mod:`logging`, not
    structlog; a URL in one of their messages carries the key when ``--auth query``.
    The message is rendered once, here, and replaced by its redacted text; so is the
    text of an attached exception.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the library's bug: keep the raw text
            message = str(record.msg)
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactFilter()
THIRD_PARTY = ("aiohttp", "asyncio", "boto3", "botocore", "s3transfer", "urllib3")
"""The loggers of the libraries the harvester drives."""


def guard_loggers(prefixes: tuple[str, ...] = THIRD_PARTY) -> None:
    """Install :class:`RedactFilter` on every existing logger under ``prefixes``.

    A logger's filters see only the records that logger creates, not those of its
    children, so each one gets the filter. Called when those libraries are imported,
    so it holds even when the harvester is a library and configures no logging.
    """
    names = [*prefixes, *logging.root.manager.loggerDict]
    for name in names:
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
