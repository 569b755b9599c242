"""CSV and plain text: the formats spreadsheets, SIEMs and firewalls read.

**csv**: a header, then one row per indicator with every column of the table and its
type first. Times are ISO 8601 UTC (``2024-01-30T00:00:00Z``), lists are joined with
``;``, an unknown score is an empty cell. A text cell that begins with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return, which a spreadsheet would run as a formula,
is prefixed with ``'`` (OWASP's advice). Quoting and line ends are RFC 4180's.

**txt**: one value per line, UTF-8, nothing else: the external dynamic list a firewall
reads. A value holding a line break or any other control character (Unicode ``Cc``,
and the line and paragraph separators U+2028/U+2029) would split into two entries, so
it is left out, and counted.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import IO

from harvester.intel.schema import Indicator

CSV_COLUMNS = (
    "type",
    "value",
    "first_seen",
    "last_seen",
    "sightings",
    "samples",
    "max_severity",
    "max_confidence",
    "iocs",
    "feeds",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LIST_SEPARATOR = ";"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe_cell(text: str) -> str:
    """``text``, defused if a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


def has_control(value: str) -> bool:
    """True when ``value`` holds a line break or another control character."""
    return _CONTROL.search(value) is not None


def _time(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CsvWriter:
    """Writes indicators as CSV rows to a binary file."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        self._csv = csv.writer(self._text)
        self._csv.writerow(CSV_COLUMNS)

    def add(self, ind: Indicator) -> str | None:
        """Write one row; never skips (returns None)."""
        self._csv.writerow(
            (
                ind.type,
                safe_cell(ind.value),
                _time(ind.first_seen),
                _time(ind.last_seen),
                ind.sightings,
                ind.samples,
                "" if ind.max_severity is None else ind.max_severity,
                "" if ind.max_confidence is None else ind.max_confidence,
                safe_cell(LIST_SEPARATOR.join(ind.iocs)),
                safe_cell(LIST_SEPARATOR.join(ind.feeds)),
            )
        )
        return None

    def close(self) -> None:
        """Flush, and leave the binary file open to its owner."""
        self._text.flush()
        self._text.detach()


class TxtWriter:
    """Writes one value per line to a binary file."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def add(self, ind: Indicator) -> str | None:
        """Write the value, or return why it cannot be a line of its own."""
        if has_control(ind.value):
            return "control_character"
        self._handle.write(ind.value.encode() + b"\n")
        return None

    def close(self) -> None:
        """Nothing to end: a list has no footer."""
