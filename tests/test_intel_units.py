"""The indicator modules' pure parts, and incremental == rebuild under random histories."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester.errors import ConfigError
from harvester.intel.build import BuildOptions, build_indicators
from harvester.intel.filters import Allowlist, ExportFilter, parse_since, parse_tlp, parse_types
from harvester.intel.schema import feed_sources, month_of
from harvester.intel.state import (
    PENDING,
    Group,
    State,
    day_versions,
    decode_state,
    encode_state,
    mark_pending,
    plan_update,
)
from harvester.intel.stix import literal, pattern, split_path
from harvester.intel.tabular import has_control, safe_cell
from harvester.schemas import FEEDS, items_to_table
from harvester.storage import LocalStore

from intel_check import expected_table, table_rows

DAYS = [date(2024, 1, 30) + timedelta(days=i) for i in range(4)]  # across a month's end
FEED_NAMES = ("ips", "domains", "network_streams")

versions = st.dictionaries(
    st.sampled_from(FEED_NAMES),
    st.dictionaries(st.sampled_from(DAYS), st.sampled_from(["a", "b", "c"]), max_size=4),
    max_size=3,
)


@given(previous=versions, current=versions)
def test_plan_reads_changed_days_and_drops_gone_ones(
    previous: dict[str, dict[date, str]], current: dict[str, dict[date, str]]
) -> None:
    plan = plan_update(previous, current)
    for feed in FEED_NAMES:
        for day in DAYS:
            old, new = previous.get(feed, {}).get(day), current.get(feed, {}).get(day)
            assert ((feed, day) in plan.read) == (new is not None and new != old)
            assert ((feed, day) in plan.drop) == (old is not None and new is None)
    for feed, day in plan.touched:
        for kind, _ in feed_sources(feed):
            assert (feed, day) in plan.by_month[kind, month_of(day)]


def _index(versions: dict[str, dict[date, str]]) -> dict[str, dict[str, Group]]:
    """One group per (feed, month), named and versioned after it."""
    index: dict[str, dict[str, Group]] = {}
    for feed, days in versions.items():
        for day, token in days.items():
            month = month_of(day)
            group = index.setdefault(feed, {}).setdefault(month, Group(version=f"v-{month}"))
            index[feed][month] = Group(version=group.version, days={**group.days, day: token})
    return index


@given(previous=versions, current=versions)
def test_state_round_trips_and_pending_days_read_as_changed(
    previous: dict[str, dict[date, str]], current: dict[str, dict[date, str]]
) -> None:
    state = State(index=_index(previous), tables=frozenset({"ip"}))
    assert state.versions == {f: d for f, d in previous.items() if d}
    plan = plan_update(state.versions, current)
    marked = mark_pending(state, plan.touched)
    assert decode_state(encode_state(marked)) == marked
    tokens = marked.versions
    pending = {(f, d) for f, days in tokens.items() for d, t in days.items() if t == PENDING}
    assert pending == set(plan.touched)
    # every pending day is read (or dropped) again by the next plan, whatever the lake holds
    again = plan_update(marked.versions, current)
    assert set(plan.touched) <= set(again.touched)
    # a group is taken from the state only at the version it was read at
    for feed, groups in state.index.items():
        for name, group in groups.items():
            assert state.group(feed, name, group.version) == group
            assert state.group(feed, name, "another") is None
            assert state.group(feed, name, "") is None


def test_a_day_held_by_two_groups_has_one_token_that_changes_with_either() -> None:
    day = DAYS[0]
    one = {"ips": {"2024-01": Group(version="1", days={day: "a"})}}
    two = {"ips": {**one["ips"], "2024-02": Group(version="2", days={day: "b"})}}
    other = {"ips": {**one["ips"], "2024-02": Group(version="3", days={day: "c"})}}
    assert day_versions(one) == {"ips": {day: "a"}}
    tokens = {day_versions(x)["ips"][day] for x in (one, two, other)}
    assert len(tokens) == 3
    with pytest.raises(ValueError, match="day token"):
        Group(version="1", days={day: PENDING})


def test_no_state_means_rebuild_and_a_foreign_state_too() -> None:
    assert plan_update(None, {"ips": {DAYS[0]: "a"}}).rebuild
    assert decode_state(b'{"format": 999, "versions": {}}') is None
    assert decode_state(b'{"format": 1, "versions": {}}') is None  # the first format
    assert decode_state(b"not json") is None
    assert decode_state(None) is None


def test_allowlist_covers_domains_and_their_subdomains_only() -> None:
    allow = Allowlist.from_lines(["# comment", "", "Example.COM.", " 10.1.2.3 "])
    assert allow.covers("domain", "example.com")
    assert allow.covers("domain", "a.b.EXAMPLE.com.")
    assert not allow.covers("domain", "notexample.com")
    assert not allow.covers("domain", "example.com.evil")
    assert allow.covers("ip", "10.1.2.3")
    assert not allow.covers("url", "http://example.com/")  # exact values only, but domains


def test_filter_reasons() -> None:
    plain = ExportFilter()
    assert plain.reason("ip", "10.0.0.1") == "not_global"
    assert plain.reason("ip", "2001:db8::1") == "not_global"
    assert plain.reason("ip", "nope") == "not_an_address"
    assert plain.reason("ip", "1.1.1.1") is None
    assert ExportFilter(include_private=True).reason("ip", "10.0.0.1") is None
    assert plain.reason("domain", "10.0.0.1") is None


def test_option_parsers() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("30d", now=now) == now - timedelta(days=30)
    assert parse_since("12h", now=now) == now - timedelta(hours=12)
    assert parse_since("2024-04-01", now=now) == datetime(2024, 4, 1, tzinfo=UTC)
    assert parse_since(None, now=now) is None
    assert parse_since("999999999d", now=now) == datetime.min.replace(tzinfo=UTC)  # everything
    with pytest.raises(ConfigError, match="longer than any date range"):
        parse_since("1000000000d", now=now)
    with pytest.raises(ConfigError, match="neither a date nor a duration"):
        parse_since("last week", now=now)
    assert parse_tlp("CLEAR") == "white" and parse_tlp("amber") == "amber"
    assert parse_types("ip, domain") == ("domain", "ip")
    with pytest.raises(ConfigError, match="unknown type 'hash'"):
        parse_types("hash")


@pytest.mark.parametrize(
    ("path", "directory", "name"),
    [
        ("C:\\Users\\x\\a.exe", "C:\\Users\\x", "a.exe"),
        ("C:\\a.exe", "C:\\", "a.exe"),
        ("/tmp/a.sh", "/tmp", "a.sh"),
        ("/a.sh", "/", "a.sh"),
        ("a.sh", None, "a.sh"),
        ("/var/tmp/", "/var/tmp/", None),
        ("/", "/", None),
        ("C:/x\\y/z.dll", "C:/x\\y", "z.dll"),
        ("/tmp/back\\slash", "/tmp/back", "slash"),  # a backslash makes it Windows-like
    ],
)
def test_split_path(path: str, directory: str | None, name: str | None) -> None:
    assert split_path(path) == (directory, name)


def test_pattern_literals_escape_backslash_and_quote_only() -> None:
    assert literal("a'b\\c\nd") == "'a\\'b\\\\c\nd'"
    assert pattern("ip", "::1") == "[ipv6-addr:value = '::1']"
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        pattern("ip", "not an address")


def test_cells_and_lines() -> None:
    for risky in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(risky) == "'" + risky
    assert safe_cell("a=1") == "a=1"
    assert has_control("a\nb") and has_control("a\x00") and has_control("a\u2028b")
    assert has_control("a\x85") and not has_control("ünïcödé space")


# -- incremental equals rebuild, whatever happens to the days ------------------------------


class MemorySource:
    """A DaySource over an in-memory lake: (feed, day) -> items, a version per change."""

    def __init__(self, days: Mapping[tuple[str, date], Sequence[dict[str, Any]]]) -> None:
        self.days = dict(days)
        self.tokens = {key: f"v{i}" for i, key in enumerate(self.days)}
        self.changes = len(self.days)

    def put(self, feed: str, day: date, items: Sequence[dict[str, Any]] | None) -> None:
        self.changes += 1
        if items is None:
            self.days.pop((feed, day), None)
            self.tokens.pop((feed, day), None)
        else:
            self.days[feed, day] = items
            self.tokens[feed, day] = f"v{self.changes}"

    async def index(self, known: Any) -> dict[str, dict[str, Group]]:
        index: dict[str, dict[str, Group]] = {}
        for (feed, day), token in self.tokens.items():
            found = index.setdefault(feed, {}).setdefault(month_of(day), Group(version=""))
            index[feed][month_of(day)] = Group(version="", days={**found.days, day: token})
        return index

    async def read_day(self, feed: str, day: date, columns: Sequence[str]) -> pa.Table:
        table = items_to_table(FEEDS[feed], self.days.get((feed, day), []))
        return table.select(list(columns))


VALUES = {"ips": ("ip", ["1.1.1.1", "2001:db8::1", ""]), "domains": ("domain", ["a.x", "b.x"]),
          "network_streams": ("dst", ["1.1.1.1", "9.9.9.9"])}  # fmt: skip


@st.composite
def day_items(draw: st.DrawFn, feed: str, day: date) -> list[dict[str, Any]]:
    column, pool = VALUES[feed]
    items = []
    for _ in range(draw(st.integers(0, 4))):
        second = draw(st.integers(0, 86399))
        stamp = datetime.combine(day, datetime.min.time(), UTC) + timedelta(seconds=second)
        item = {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ioc": draw(st.sampled_from(["i1", "i2", None])),
            "confidence": draw(st.sampled_from([10, 90, None])),
            "severity": draw(st.sampled_from([20, 100, None])),
            "sample_id": draw(st.sampled_from(["s1", "s2", None])),
            "sample_sha256": draw(st.sampled_from(["h1", "h2", None])),
            column: draw(st.sampled_from([*pool, None])),
        }
        if feed == "network_streams":
            item.update(src="10.0.0.1", src_port=1, dst_port=2)
        items.append(item)
    return items


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[Any, Any], list[tuple[str, date, Any]]]:
    start = {(f, d): draw(day_items(f, d)) for f in FEED_NAMES for d in DAYS if draw(st.booleans())}
    start.setdefault(("domains", DAYS[0]), [])  # a lake with a day (an empty one, maybe)
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        feed, day = draw(st.sampled_from(FEED_NAMES)), draw(st.sampled_from(DAYS))
        steps.append((feed, day, None if draw(st.booleans()) else draw(day_items(feed, day))))
    return start, steps


def _items(source: MemorySource) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for (feed, _), items in source.days.items():
        out.setdefault(feed, []).extend(items)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_updates_after_any_history_equal_the_records(history: Any) -> None:
    """Days added, replaced or removed, and a build after each change: always exact.

    The table equals plain Python over the records the lake holds at that moment, and
    a rebuild at the end changes nothing.
    """
    start, steps = history
    source = MemorySource(start)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)

        async def run(rebuild: bool = False) -> None:
            await build_indicators(
                store, source=source, options=BuildOptions(rebuild=rebuild, memory_limit="256MB")
            )

        asyncio.run(run())
        for feed, day, items in steps:
            source.put(feed, day, items)
            asyncio.run(run())
            want = expected_table(_items(source))
            assert table_rows(tmp) == {k: want.get(k, set()) for k in table_rows(tmp)}
        incremental = table_rows(tmp)
        asyncio.run(run(rebuild=True))
        assert table_rows(tmp) == incremental
