"""The API key as a value that cannot leak by accident.

:class:`Secret` prints as ``***`` in ``str``, ``repr`` and f-strings; only
:meth:`Secret.reveal` gives the key, and only the HTTP client calls it. Every secret
built is also remembered so :func:`redact` can scrub it from any text (exception
messages from aiohttp include URLs, and with ``--auth query`` the key is in the URL).
The log pipeline runs every event through :func:`redact` as a last line of defence.
"""

from __future__ import annotations

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
