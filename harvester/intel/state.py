"""The builder's memory, and what an update must redo.

The state records what the lake held when the partial aggregates were last computed,
as the :class:`~harvester.intel.source.DaySource` described it: an :data:`Index`, per
feed and *group* (a manifest partition: one feed's month), the version of the object
the group was read from and a token per UTC day that changes whenever that day's data
changes. An update compares the days' tokens with the lake's now: a day that is new or
whose token changed is read again, a day that left the lake has its aggregates
dropped, and nothing else is touched. A group whose object is still at the version
recorded is not even read again: its days' tokens are taken from the state, which is
what makes a build with nothing new cost the same on a lake of a week and of ten years.

Before the builder changes any partial it records the days it is about to redo as
*pending*: their token becomes :data:`PENDING`, which no data ever has. A build killed
half way thus leaves those days looking changed, and the next build redoes them, even
if their data went back to an earlier version meanwhile. The state also names the
types whose table exists, so a table removed behind the builder's back is noticed
without listing the partials. Everything here is pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType

import orjson

from harvester.intel.schema import TYPES, month_of, types_of

FORMAT = 2
"""Bumped whenever partials or the state change meaning; another format means a rebuild."""
PENDING = "pending"

Versions = Mapping[str, Mapping[date, str]]
"""feed -> day -> version token."""
DayKey = tuple[str, date]


@dataclass(frozen=True, kw_only=True)
class Group:
    """What one group of the lake (a manifest partition) held when it was read."""

    version: str
    """The version of the object it was read from; ``""`` when there is none to compare
    (a listing, an in-memory manifest): such a group is always read again."""
    days: Mapping[date, str] = field(default_factory=dict)
    """Each day's token, for the data this group holds of that day."""

    def __post_init__(self) -> None:
        if any(not token or token == PENDING for token in self.days.values()):
            raise ValueError(f"a day token is neither empty nor {PENDING!r}")


Index = Mapping[str, Mapping[str, Group]]
"""feed -> group name -> :class:`Group`."""


def day_versions(index: Index) -> dict[str, dict[date, str]]:
    """Each (feed, day)'s token: its group's, or a digest of its groups' when several."""
    out: dict[str, dict[date, str]] = {}
    for feed, groups in index.items():
        parts: dict[date, list[tuple[str, str]]] = {}
        for name, group in sorted(groups.items()):
            for day, token in group.days.items():
                parts.setdefault(day, []).append((name, token))
        days = {}
        for day, found in parts.items():
            if len(found) == 1:
                days[day] = found[0][1]
            else:
                text = "\n".join(f"{name}\t{token}" for name, token in found)
                days[day] = hashlib.sha256(text.encode()).hexdigest()[:32]
        if days:
            out[feed] = dict(sorted(days.items()))
    return out


@dataclass(frozen=True, kw_only=True)
class State:
    """The lake as the partials reflect it, the days being redone, the tables there."""

    index: Index = field(default_factory=dict)
    pending: Mapping[str, frozenset[date]] = field(default_factory=dict)
    tables: frozenset[str] = frozenset()
    """The types whose table object exists."""

    def __post_init__(self) -> None:
        if not self.tables <= set(TYPES):
            raise ValueError(f"unknown types {sorted(self.tables - set(TYPES))}")

    @property
    def versions(self) -> dict[str, dict[date, str]]:
        """Each (feed, day)'s token as the partials hold it; pending days :data:`PENDING`."""
        versions = day_versions(self.index)
        for feed, days in self.pending.items():
            for day in days:
                versions.setdefault(feed, {})[day] = PENDING
        return versions

    def group(self, feed: str, name: str, version: str | None) -> Group | None:
        """The recorded group ``name`` of ``feed`` if it was read at ``version`` (not "")."""
        found = self.index.get(feed, {}).get(name)
        if found is None or not version or found.version != version:
            return None
        return found


def encode_state(state: State) -> bytes:
    """The state object's bytes (sorted, so equal states are equal bytes)."""
    doc = {
        "format": FORMAT,
        "index": {
            feed: {
                name: {
                    "version": group.version,
                    "days": {d.isoformat(): t for d, t in sorted(group.days.items())},
                }
                for name, group in sorted(groups.items())
            }
            for feed, groups in sorted(state.index.items())
            if groups
        },
        "pending": {
            feed: sorted(d.isoformat() for d in days)
            for feed, days in sorted(state.pending.items())
            if days
        },
        "tables": sorted(state.tables),
    }
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def decode_state(data: bytes | None) -> State | None:
    """The state an object records, or None (absent, unreadable, another format).

    None makes the next build a full rebuild, which is always correct.
    """
    if data is None:
        return None
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        index = {
            str(feed): {
                str(name): Group(
                    version=str(group["version"]),
                    days={date.fromisoformat(d): str(t) for d, t in group["days"].items()},
                )
                for name, group in groups.items()
            }
            for feed, groups in doc["index"].items()
        }
        pending = {
            str(feed): frozenset(date.fromisoformat(d) for d in days)
            for feed, days in doc["pending"].items()
        }
        return State(index=index, pending=pending, tables=frozenset(map(str, doc["tables"])))
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
    """The days that changed between the state's ``previous`` and the lake's ``current``."""
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


def mark_pending(state: State, days: Iterable[DayKey]) -> State:
    """``state`` with ``days`` (and the days already pending) marked pending."""
    pending = {feed: set(found) for feed, found in state.pending.items()}
    for feed, day in days:
        pending.setdefault(feed, set()).add(day)
    return State(
        index=state.index,
        pending={feed: frozenset(found) for feed, found in pending.items()},
        tables=state.tables,
    )
