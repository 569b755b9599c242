"""Planning a run, purely: what is asked for, what is done, what this shard does.

A run's work is, per feed, a set of windows as intervals of epoch seconds
(:class:`~harvester.intervals.Spans`): the range asked for, minus the windows the
manifest already holds with the same query. Intervals, not a list of windows, so that
ten years of 15-minute windows plan in the memory of their gaps.

**Shards own (feed, month) blocks.** Months are numbered from the epoch and feeds by
their sorted name, and the numbers are dealt round-robin. A block's windows, its day
files and its manifest partition therefore belong to one shard, whatever range a run
plans (so ``--since-last`` shards that plan at different times still split one job),
and no query span ever crosses into another shard's block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from harvester.config import Shard
from harvester.intervals import Spans
from harvester.manifest.model import month_domain, months_between
from harvester.windows import format_api


def month_number(month: str) -> int:
    """Months since January 1970."""
    return (int(month[:4]) - 1970) * 12 + int(month[5:7]) - 1


def shard_of(feed: str, month: str, *, feeds: Sequence[str], count: int) -> int:
    """The shard that owns ``feed``'s windows starting in ``month``."""
    order = sorted(feeds)
    return (month_number(month) * len(order) + order.index(feed)) % count


def shard_share(spans: Spans, *, feed: str, shard: Shard, feeds: Sequence[str], step: int) -> Spans:
    """The part of ``spans`` (windows of ``feed``) that ``shard`` owns."""
    if shard.count == 1 or not spans:
        return spans
    first, last = spans.first, spans.last
    assert first is not None
    assert last is not None
    owned = Spans.of(
        month_domain(month, step)
        for month in months_between(first, last)
        if shard_of(feed, month, feeds=feeds, count=shard.count) == shard.index
    )
    return spans & owned


def windows_in(spans: Spans, step: int) -> int:
    """How many windows of ``step`` seconds ``spans`` holds."""
    return spans.total // step


@dataclass(frozen=True, kw_only=True)
class FeedPlan:
    """One feed's share of a run."""

    feed: str
    planned: Spans
    """Every window the run's range holds (all shards)."""
    done: Spans
    """Planned windows already complete with this query (and not to be redone)."""
    todo: Spans
    """The shard's windows to harvest."""
    again: Spans = field(default_factory=Spans)
    """Complete windows harvested again for late records (``--lookback``), all shards."""
    stale: Spans = field(default_factory=Spans)
    """Planned windows complete when planned but harvested anyway: ``--force``, ``again``,
    or (Iceberg) rows a rollback took away. Another run completing one of them meanwhile
    counts as done only if it did so after this plan."""

    @property
    def left(self) -> Spans:
        """Windows to harvest, all shards together."""
        return self.planned - self.done


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run will do."""

    step: int
    """The window size in seconds."""
    shard: Shard
    feeds: Mapping[str, FeedPlan] = field(default_factory=dict)

    @property
    def todo(self) -> dict[str, Spans]:
        """The shard's windows to harvest, per feed (feeds with nothing left omitted)."""
        return {f: p.todo for f, p in self.feeds.items() if p.todo}

    def count(self, spans: Spans) -> int:
        """Windows in ``spans``."""
        return windows_in(spans, self.step)


def describe_plan(plan: Plan, *, max_span: int) -> dict[str, Any]:
    """A JSON-able view of a plan: per feed, and every shard's share of the job."""
    feeds = sorted(plan.feeds)
    views: dict[str, dict[str, Any]] = {}
    for name, fp in plan.feeds.items():
        views[name] = {
            "windows": plan.count(fp.planned),
            "done": plan.count(fp.done & fp.planned),
            "todo": plan.count(fp.left),
            "lookback": plan.count(fp.again & fp.planned),
            "first": format_api_epoch(fp.planned.first),
            "last": format_api_epoch(fp.planned.last),
        }
    shards = []
    requests = 0
    for index in range(plan.shard.count):
        shard = Shard(index=index, count=plan.shard.count)
        units = todo = spans = 0
        for name, fp in plan.feeds.items():
            share = shard_share(fp.planned, feed=name, shard=shard, feeds=feeds, step=plan.step)
            left = shard_share(fp.left, feed=name, shard=shard, feeds=feeds, step=plan.step)
            units += plan.count(share)
            todo += plan.count(left)
            spans += sum(-(-(end - start) // max_span) for start, end in left)
        shards.append({"shard": f"{index}/{plan.shard.count}", "units": units, "todo": todo})
        # one query per span at the least, plus one preflight per shard that has work
        requests += spans + (1 if todo else 0)
    return {
        "units": sum(v["windows"] for v in views.values()),
        "done": sum(v["done"] for v in views.values()),
        "todo": sum(v["todo"] for v in views.values()),
        "min_requests": requests,
        "feeds": views,
        "shards": shards,
    }


def format_api_epoch(epoch: int | None) -> str | None:
    """An epoch second as the API writes instants, or None."""
    if epoch is None:
        return None
    return format_api(datetime.fromtimestamp(epoch, UTC))
