"""The builder's memory, and what an update must redo.

The state records, per feed and day, the version token (:mod:`~harvester.intel.source`)
of the data the partial aggregates were computed from. An update compares it with the
lake's tokens now: a day that is new or whose token changed is read again, a day that
left the lake has its aggregates dropped, and nothing else is touched.

Before the builder changes any partial it records the days it is about to redo as
:data:`PENDING`, a token no data ever has. A build killed half way thus leaves those
days looking changed, and the next build redoes them, even if their data went back
to an earlier version meanwhile. Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType

import orjson

from harvester.intel.schema import month_of, types_of

FORMAT = 1
"""Bumped whenever partials change meaning; a state of another format means a rebuild."""
PENDING = "pending"

Versions = Mapping[str, Mapping[date, str]]
"""feed -> day -> version token."""
DayKey = tuple[str, date]


def encode_state(versions: Versions) -> bytes:
    """The state object's bytes (sorted, so equal states are equal bytes)."""
    doc = {
        "format": FORMAT,
        "versions": {
            feed: {day.isoformat(): token for day, token in sorted(days.items())}
            for feed, days in sorted(versions.items())
            if days
        },
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def decode_state(data: bytes | None) -> Versions | None:
    """The versions a state object records, or None (absent, unreadable, other format).

    None makes the next build a full rebuild, which is always correct.
    """
    if data is None:
        return None
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        return {
            str(feed): {date.fromisoformat(day): str(token) for day, token in days.items()}
            for feed, days in doc["versions"].items()
        }
    except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError):
        return None


@dataclass(frozen=True, kw_only=True)
class UpdatePlan:
    """What a build redoes: the (feed, day)s to read, and those to drop.

    ``rebuild`` means no trustworthy state: every day is read, and every partial is
    written from scratch (partials of months no longer in the lake are removed).
    """

    read: tuple[DayKey, ...]
    drop: tuple[DayKey, ...]
    rebuild: bool
    by_month: Mapping[tuple[str, str], tuple[DayKey, ...]] = field(init=False)

    def __post_init__(self) -> None:
        if set(self.read) & set(self.drop):
            raise ValueError("a day cannot be both read and dropped")
        if self.rebuild and self.drop:
            raise ValueError("a rebuild has nothing to drop")
        months: dict[tuple[str, str], list[DayKey]] = {}
        for feed, day in sorted({*self.read, *self.drop}):
            for kind in types_of(feed):
                months.setdefault((kind, month_of(day)), []).append((feed, day))
        object.__setattr__(
            self, "by_month", MappingProxyType({k: tuple(v) for k, v in sorted(months.items())})
        )

    @property
    def touched(self) -> tuple[DayKey, ...]:
        """Every (feed, day) whose aggregates change, sorted."""
        return tuple(sorted({*self.read, *self.drop}))

    @property
    def types(self) -> tuple[str, ...]:
        """The types whose partials, and so whose table, change."""
        return tuple(sorted({kind for kind, _ in self.by_month}))


def plan_update(previous: Versions | None, current: Versions) -> UpdatePlan:
    """The days that changed between the state ``previous`` and the lake's ``current``."""
    if previous is None:
        every = tuple(sorted((feed, day) for feed, days in current.items() for day in days))
        return UpdatePlan(read=every, drop=(), rebuild=True)
    read = [
        (feed, day)
        for feed, days in current.items()
        for day, token in days.items()
        if previous.get(feed, {}).get(day) != token
    ]
    drop = [
        (feed, day)
        for feed, days in previous.items()
        for day in days
        if day not in current.get(feed, {})
    ]
    return UpdatePlan(read=tuple(sorted(read)), drop=tuple(sorted(drop)), rebuild=False)


def mark_pending(previous: Versions, plan: UpdatePlan) -> dict[str, dict[date, str]]:
    """``previous`` with every day the plan touches set to :data:`PENDING`."""
    marked = {feed: dict(days) for feed, days in previous.items()}
    for feed, day in plan.touched:
        marked.setdefault(feed, {})[day] = PENDING
    return marked
