"""Object names of the Hive layout (pure).

Data: ``{feed}/dt=YYYY-MM-DD/part-{START}.parquet``, ``START`` being the first window
the file was created for (``20240101T000000Z``): a day's main file is named after the
day's midnight; a day too big for one file gets further files named after the window
they start at. A lake written by version 1 of the harvester has one file per window,
``part-{START}_{END}.parquet``; those are *legacy* files, and a run that writes their
day folds them into the day's main file.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

STAMP = "%Y%m%dT%H%M%SZ"
_LEGACY = re.compile(r"/part-(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)\.parquet$")


def stamp(epoch: int) -> str:
    """``20240115T090000Z`` for an instant in epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime(STAMP)


def day_of(epoch: int) -> date:
    """The UTC date of an instant in epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC).date()


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def day_start(day: date) -> int:
    """Midnight UTC of ``day`` in epoch seconds."""
    # Day arithmetic, not a datetime: a commit asks this for every day of every window.
    return (day.toordinal() - _EPOCH_ORDINAL) * 86_400


def day_folder(feed: str, day: date) -> str:
    """The Hive partition folder of ``feed`` on ``day``."""
    return f"{feed}/dt={day.isoformat()}/"


def data_key(feed: str, day: date, first: int) -> str:
    """The data file of ``feed`` on ``day`` created for windows from ``first`` on."""
    return f"{day_folder(feed, day)}part-{stamp(first)}.parquet"


def main_key(feed: str, day: date) -> str:
    """A day's main data file."""
    return data_key(feed, day, day_start(day))


def is_legacy(key: str) -> bool:
    """True for a version 1 file (one window: ``part-START_END.parquet``)."""
    return _LEGACY.search(key) is not None
