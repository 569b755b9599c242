"""Time windows: parsing instants and durations, and splitting a range into windows.

Everything here is pure. A window is half-open, ``[start, end)``, UTC-aligned, and
owns exactly the records whose timestamp ``t`` satisfies ``start <= t < end``. The API
is asked for a slightly wider span (see :func:`query_bounds`) because nobody knows
whether its ``after``/``before`` are inclusive; records outside the window are then
dropped client side, so each record lands in exactly one window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

from harvester.errors import ConfigError

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
API_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_API_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_DURATION = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>[dhm])$")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


def parse_instant(text: str, *, name: str = "time") -> datetime:
    """Parse ISO 8601 with ``Z``, an offset or a bare date; return an aware UTC datetime.

    A naive date-time (no zone) is rejected: guessing the zone would move windows.
    """
    raw = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            return datetime.combine(date.fromisoformat(raw), datetime.min.time(), tzinfo=UTC)
        except ValueError:
            raise ConfigError(f"{name} {text!r} is not a valid date; use YYYY-MM-DD") from None
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"{name} {text!r} is not ISO 8601; use e.g. 2024-01-15, 2024-01-15T09:00:00Z "
            "or 2024-01-15T09:00:00+01:00"
        ) from None
    if value.tzinfo is None:
        raise ConfigError(f"{name} {text!r} has no time zone; add Z for UTC, e.g. {raw}Z")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ConfigError(
            f"{name} {text!r} is out of range in UTC; use a date from 1970 on"
        ) from None
    if value.microsecond:
        raise ConfigError(f"{name} {text!r} has fractions of a second; the API counts seconds")
    return value


def format_api(instant: datetime) -> str:
    """Format an instant exactly as the API wants it: ``YYYY-MM-DDTHH:MM:SSZ``."""
    return instant.astimezone(UTC).strftime(API_FORMAT)


def parse_api(text: str) -> datetime:
    """Inverse of :func:`format_api`: exactly ``YYYY-MM-DDTHH:MM:SSZ``, as an aware UTC time.

    Anything else -- another layout, a lone digit, an offset, a second that does not
    exist (Feb 30, 23:59:60) -- raises ValueError.
    """
    try:
        if _API_STAMP.fullmatch(text):
            return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is not YYYY-MM-DDTHH:MM:SSZ naming a real second")


def format_compact(instant: datetime) -> str:
    """Format an instant for object names: ``20240115T090000Z`` (no ``:``)."""
    return instant.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_compact(text: str) -> datetime:
    """Inverse of :func:`format_compact`."""
    return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def parse_duration(text: str, *, name: str = "--window") -> timedelta:
    """Parse ``15m``, ``6h``, ``1d`` ...; the duration must divide a day or be whole days."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"{name} {text!r} is not a duration; use e.g. 1d, 6h, 1h or 15m")
    step = _times(int(match["n"]), match["unit"], name=name, text=text)
    if step < DAY and DAY % step:
        raise ConfigError(f"{name} {text!r} does not divide a day; use e.g. 1d, 6h, 1h or 15m")
    if step > DAY and step % DAY:
        raise ConfigError(f"{name} {text!r} is longer than a day but not whole days; use Nd")
    return step


def parse_age(text: str, *, name: str) -> timedelta:
    """Parse a span of whole units, ``0m``, ``30m``, ``12h``, ``90d``: no grid rules apply."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if not match:
        raise ConfigError(f"{name} {text!r} is not a duration; use e.g. 30m, 1h or 1d")
    return _times(int(match[1]), match[2], name=name, text=text)


def _times(count: int, unit: str, *, name: str, text: str) -> timedelta:
    try:
        return count * _UNITS[unit]
    except OverflowError:
        raise ConfigError(f"{name} {text!r} is longer than any date range; use less") from None


def format_duration(step: timedelta) -> str:
    """Inverse of :func:`parse_duration` for the canonical unit."""
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, kw_only=True, order=True)
class Window:
    """A half-open UTC time window ``[start, end)``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        if not self.start < self.end:
            raise ValueError(f"empty window {self.start} .. {self.end}")

    @cached_property
    def seconds(self) -> tuple[int, int]:
        """``start`` and ``end`` in seconds since the Unix epoch."""
        return int(self.start.timestamp()), int(self.end.timestamp())

    @cached_property
    def key(self) -> str:
        """A stable name for the window, safe in object names: ``START_END``."""
        return f"{format_compact(self.start)}_{format_compact(self.end)}"

    @classmethod
    def from_key(cls, key: str) -> Window:
        """Inverse of :attr:`key`."""
        start, _, end = key.partition("_")
        return cls(start=parse_compact(start), end=parse_compact(end))

    def contains(self, instant: datetime) -> bool:
        """True when ``start <= instant < end``."""
        return self.start <= instant < self.end

    def days(self) -> list[date]:
        """The UTC dates whose partitions this window can write to."""
        return list(self._days)

    @cached_property
    def _days(self) -> tuple[date, ...]:
        # Asked once a page by the lake writer: worth remembering.
        first = self.start.date()
        last = (self.end - SECOND).date()
        return tuple(first + timedelta(days=i) for i in range((last - first).days + 1))

    @cached_property
    def label(self) -> str:
        """The window as logs and reports show it: ``[START, END)`` in API form."""
        return f"[{format_api(self.start)}, {format_api(self.end)})"

    def __str__(self) -> str:
        return self.label


def floor_to(instant: datetime, step: timedelta) -> datetime:
    """Round ``instant`` down to the grid of ``step`` anchored at the Unix epoch (UTC)."""
    return instant - (instant - EPOCH) % step


def plan_windows(after: datetime, before: datetime, step: timedelta) -> list[Window]:
    """Split ``[after, before)`` into windows of ``step`` on a fixed UTC grid.

    The grid is anchored at the Unix epoch, so daily windows run midnight to midnight
    UTC and two runs over overlapping ranges always cut the same windows. Both ends of
    the range must sit on the grid: a window is the unit the lake names its files and
    its manifest after, and two different cuts of the same time would hold the same
    records twice.
    """
    if not after < before:
        raise ConfigError(
            f"--after {format_api(after)} is not before --before {format_api(before)}; "
            "swap them or widen the range"
        )
    for flag, value in (("--after", after), ("--before", before)):
        if floor_to(value, step) != value:
            size = format_duration(step)
            down, up = floor_to(value, step), floor_to(value, step) + step
            raise ConfigError(
                f"{flag} {format_api(value)} is not on the {size} window grid; "
                f"use {format_api(down)} or {format_api(up)}, or a smaller --window"
            )
    count = (before - after) // step
    return [Window(start=after + i * step, end=after + (i + 1) * step) for i in range(count)]


def query_bounds(window: Window) -> tuple[str, str]:
    """The ``after``/``before`` strings to send for a window.

    ``after`` is one second early, so a record at exactly ``start`` is returned whether
    the server treats ``after`` as inclusive or exclusive; ``before`` is ``end``, which
    returns ``end - 1s`` either way. Timestamps are whole seconds, so nothing the window
    owns is outside this span, and the extra second is filtered out by the caller.
    """
    return format_api(window.start - SECOND), format_api(window.end)
