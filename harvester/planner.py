"""Planning a run, purely: units, shards, batches, the resume point, the plan view.

A *unit* is one (feed, window): the unit of files and of the manifest. A *batch* is
what one worker fetches in one paged query: the consecutive units of one feed inside
one *span* of the grid (a UTC day for windows shorter than a day, else the window
itself). Fetching a span instead of each small window means a year of 15-minute
windows costs a request per day, not 96, when the days are sparse; records are then
routed to their own windows, so the lake is the same either way.

Shards own whole spans, fixed by the span's absolute place on the grid: a shard's
share never depends on where a plan starts, and shards never split a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from harvester.config import Shard
from harvester.windows import DAY, EPOCH, Window, format_api


@dataclass(frozen=True, kw_only=True, order=True)
class Unit:
    """One feed over one window: the unit of work, of files and of the manifest."""

    window: Window
    feed: str

    def __str__(self) -> str:
        return f"{self.feed} {self.window}"


@dataclass(frozen=True, kw_only=True)
class Batch:
    """Consecutive units of one feed, fetched with one paged query over their span."""

    feed: str
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("a batch needs at least one window")

    @property
    def span(self) -> Window:
        """The time the batch's query covers."""
        return Window(start=self.windows[0].start, end=self.windows[-1].end)

    @property
    def units(self) -> list[Unit]:
        """The units of the batch, in time order."""
        return [Unit(window=w, feed=self.feed) for w in self.windows]


def span_size(window: Window) -> timedelta:
    """The span a window is fetched and sharded with: a day, or the window if longer."""
    return max(window.end - window.start, DAY)


def shard_of(unit: Unit, *, feeds: Sequence[str], count: int) -> int:
    """The shard that owns ``unit``, by its span's absolute place on the grid.

    Spans are numbered from the epoch and feeds by their sorted name, and the numbers
    are dealt round-robin. A contiguous range is dealt out evenly, within one span's
    worth of units per shard.
    """
    slot = span_index(unit.window)
    order = sorted(feeds)
    return (slot * len(order) + order.index(unit.feed)) % count


def assign_shard(units: Iterable[Unit], shard: Shard, *, feeds: Sequence[str]) -> list[Unit]:
    """The units of ``shard`` among ``units``, sorted."""
    return sorted(u for u in units if shard_of(u, feeds=feeds, count=shard.count) == shard.index)


def group_units(units: Iterable[Unit]) -> list[Batch]:
    """Group units into batches: consecutive windows of one feed within one span."""
    batches: list[Batch] = []
    run: list[Window] = []
    feed = ""
    for unit in sorted(units, key=lambda u: (u.feed, u.window)):
        if run and (
            unit.feed != feed
            or unit.window.start != run[-1].end
            or span_index(unit.window) != span_index(run[0])
        ):
            batches.append(Batch(feed=feed, windows=tuple(run)))
            run = []
        feed = unit.feed
        run.append(unit.window)
    if run:
        batches.append(Batch(feed=feed, windows=tuple(run)))
    # Oldest first across feeds, so a run that stops early leaves a clean frontier.
    return sorted(batches, key=lambda b: (b.span.start, b.feed))


def span_index(window: Window) -> int:
    """The number of the span ``window`` lies in, counted from the epoch."""
    return (window.start - EPOCH) // span_size(window)


class _Complete(Protocol):
    @property
    def fingerprint(self) -> str: ...


def resume_point(
    entries: Mapping[Window, _Complete], fingerprint: str, start: datetime | None = None
) -> datetime | None:
    """The end of the contiguous run of complete windows from ``start`` (or the first one).

    A gap (a window that failed, or was never harvested) stops the run, so a nightly
    ``--since-last`` job goes back for it instead of skipping history for good.
    """
    complete = sorted(w for w, e in entries.items() if e.fingerprint == fingerprint)
    if start is not None:
        complete = [w for w in complete if w.start >= start]
    chain_end = start
    for window in complete:
        if chain_end is not None and window.start != chain_end:
            break
        chain_end = window.end
    return chain_end


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run will do: every unit of this shard, and which are already done.

    ``every`` and ``every_done`` describe the whole job (all shards), for display.
    """

    units: tuple[Unit, ...]
    done: frozenset[Unit]
    every: tuple[Unit, ...] = ()
    every_done: frozenset[Unit] = frozenset()

    @property
    def todo(self) -> list[Unit]:
        """Units still to harvest, oldest window first."""
        return [u for u in self.units if u not in self.done]


def describe_plan(the_plan: Plan, shard_count: int, feeds: Sequence[str]) -> dict[str, Any]:
    """A JSON-able view of a plan: per feed, and each shard's share of the job."""
    views: dict[str, dict[str, Any]] = {}
    for unit in the_plan.every:
        view = views.setdefault(
            unit.feed, {"windows": 0, "done": 0, "todo": 0, "first": None, "last": None}
        )
        view["windows"] += 1
        view["done" if unit in the_plan.every_done else "todo"] += 1
        view["first"] = view["first"] or format_api(unit.window.start)
        view["last"] = format_api(unit.window.end)
    shards = []
    requests = 0
    for index in range(shard_count):
        share = assign_shard(the_plan.every, Shard(index=index, count=shard_count), feeds=feeds)
        todo = [u for u in share if u not in the_plan.every_done]
        shards.append({"shard": f"{index}/{shard_count}", "units": len(share), "todo": len(todo)})
        # one query per batch, plus one preflight per shard that has work
        requests += len(group_units(todo)) + (1 if todo else 0)
    return {
        "units": len(the_plan.every),
        "done": len(the_plan.every_done),
        "todo": sum(v["todo"] for v in views.values()),
        "min_requests": requests,  # batches with more than one page need more
        "feeds": views,
        "shards": shards,
    }
