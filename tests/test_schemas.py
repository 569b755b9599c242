"""Items -> typed Arrow: known fields typed, everything else kept losslessly in extra."""

from datetime import datetime

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.errors import DataError
from harvester.schemas import FEEDS, _careful_table, _fast_table, _typical_table, items_to_table


def item(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "timestamp": "2024-01-01T00:00:00Z",
        "ioc": "x",
        "confidence": 90,
        "severity": 80,
        "sample_id": "a" * 32,
        "sample_sha256": "b" * 64,
        "domain": "example.com",
    }
    base.update(over)
    return base


def test_known_fields_are_typed_and_extra_is_null() -> None:
    """A documented item fills typed columns and leaves extra null."""
    table = items_to_table(FEEDS["domains"], [item()])
    row = table.to_pylist()[0]
    assert table.schema.field("timestamp").type == pa.timestamp("s", tz="UTC")
    assert table.schema.field("confidence").type == pa.int32()
    assert row["domain"] == "example.com" and row["extra"] is None


def test_unknown_and_mistyped_values_go_to_extra() -> None:
    """A new field and a confidence sent as a string both survive in extra."""
    table = items_to_table(FEEDS["domains"], [item(confidence="95", family={"name": "emotet"})])
    row = table.to_pylist()[0]
    assert row["confidence"] is None
    assert orjson.loads(row["extra"]) == {"confidence": "95", "family": {"name": "emotet"}}


def test_nulls_and_missing_fields_are_nulls() -> None:
    """A null value and a missing field become null, not errors."""
    raw = item(port=None, ip="::1")
    del raw["domain"]
    row = items_to_table(FEEDS["ips"], [raw]).to_pylist()[0]
    assert row["port"] is None and row["ip"] == "::1" and row["extra"] is None


def test_bool_is_not_an_integer() -> None:
    """True is not silently stored as confidence 1."""
    row = items_to_table(FEEDS["domains"], [item(confidence=True)]).to_pylist()[0]
    assert row["confidence"] is None and orjson.loads(row["extra"]) == {"confidence": True}


def test_out_of_range_integer_goes_to_extra() -> None:
    """An int too big for its column is kept in extra, not overflowed."""
    row = items_to_table(FEEDS["ips"], [item(port=2**40)]).to_pylist()[0]
    assert row["port"] is None and orjson.loads(row["extra"]) == {
        "domain": "example.com",
        "port": 2**40,
    }


def test_noncanonical_timestamp_is_parsed_and_kept() -> None:
    """A timestamp with an offset is typed and its original text is kept in extra."""
    row = items_to_table(
        FEEDS["domains"], [item(timestamp="2024-01-01T01:00:00+01:00")]
    ).to_pylist()[0]
    assert row["timestamp"].isoformat() == "2024-01-01T00:00:00+00:00"
    assert orjson.loads(row["extra"]) == {"timestamp": "2024-01-01T01:00:00+01:00"}


def test_missing_timestamp_is_a_data_error() -> None:
    """An item with no timestamp cannot be windowed: a clear error, not a silent drop."""
    with pytest.raises(DataError, match="no timestamp"):
        items_to_table(FEEDS["domains"], [item(timestamp=None)])


def test_every_feed_schema_is_athena_safe() -> None:
    """Column names are lowercase identifiers and every feed has extra last."""
    for feed in FEEDS.values():
        names = feed.schema.names
        assert names[-1] == "extra"
        assert all(n.islower() and n.replace("_", "").isalnum() for n in names)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.sampled_from([95.0, 0.0, -1.0, 2**31, -(2**31) - 1, ""]),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
# Stamps a lenient strptime reads but that are not the documented form: each must keep its
# original text in `extra`, whichever path converts the page.
LOOSE_STAMPS = [
    "2024-1-01T 00:00:00Z",
    " 2024-01-01T00:00:0Z",
    "2024-02-30T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2024-01-01T23:59:60Z",
    "2024-01-01 00:00:00Z",
]
CANONICAL_STAMPS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")
)
STAMPS = st.one_of(
    CANONICAL_STAMPS,
    st.just("2024-01-01T01:00:00+01:00"),
    st.sampled_from(LOOSE_STAMPS),
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(FEEDS)),
    st.lists(
        st.fixed_dictionaries(
            {"timestamp": STAMPS},
            optional={
                k: VALUES
                for k in ("ioc", "confidence", "port", "aid", "domain", "src_port", "surprise")
            },
        ),
        max_size=6,
    ),
)
def test_fast_path_agrees_with_the_careful_path(feed: str, items: list[dict[str, object]]) -> None:
    """Column-at-a-time or item by item, a page becomes the same rows (order aside)."""
    careful = _careful_table(FEEDS[feed], items)
    typical = _typical_table(FEEDS[feed], items)
    if typical is not None:
        assert typical.equals(careful)
    known = all(FEEDS[feed].names.issuperset(i) for i in items)
    fast = _fast_table(FEEDS[feed], items) if known else None
    if isinstance(fast, pa.Table):
        assert fast.equals(careful)
    mixed = items_to_table(FEEDS[feed], items)
    assert mixed.schema == careful.schema
    assert sorted(map(repr, mixed.to_pylist())) == sorted(map(repr, careful.to_pylist()))


def test_fast_path_handles_the_usual_page() -> None:
    """A documented page takes the fast path; an odd row is singled out, not the page."""
    assert isinstance(_fast_table(FEEDS["domains"], [item(), item(sample_sha256=None)]), pa.Table)
    assert _fast_table(FEEDS["domains"], [item(), item(confidence=95.5)]) == {1}
    assert _fast_table(FEEDS["ips"], [item(port=2**40), item()]) == {0}
    assert _fast_table(FEEDS["ips"], [item(), item(timestamp="2024-01-01T00:00:00.5Z")]) == {1}


def test_typical_path_takes_the_usual_page_and_refuses_any_odd_value() -> None:
    """Unknown keys stay on the one-pass path; one mistyped value anywhere leaves it."""
    page = [item(ioc=str(i)) for i in range(2000)] + [item(family={"name": "emotet"}, n=None)]
    typical = _typical_table(FEEDS["domains"], page)
    assert typical is not None and typical.equals(_careful_table(FEEDS["domains"], page))
    assert typical.column("extra").null_count == 2000
    for odd in (
        {"confidence": 95.0},
        {"confidence": True},
        {"confidence": "95"},
        {"severity": 2**31},
        {"domain": 7},
        {"sample_id": ["a"]},
        {"timestamp": "2024-01-01T00:00:00.5Z"},
        {"timestamp": None},
        *({"timestamp": loose} for loose in LOOSE_STAMPS),
    ):
        late = [*page, item(**odd)]  # last, so a sampling type check would miss it
        assert _typical_table(FEEDS["domains"], late) is None, odd


def test_integers_beyond_64_bits_are_kept_exactly() -> None:
    """An int too big for any column (and for orjson) is written to extra exactly."""
    import json

    row = items_to_table(FEEDS["artifacts"], [item(aid=2**70)]).to_pylist()[0]
    assert row["aid"] is None
    assert json.loads(row["extra"])["aid"] == 2**70


def test_json_orjson_refuses_is_still_read() -> None:
    """A page with NaN (valid for many JSON writers, refused by orjson) is parsed, not retried."""
    from harvester.client import _parse_page

    body = b'{"data": {"index": 0, "items_per_page": 5, "items": [{"score": NaN}]}}'
    page = _parse_page("u", body, "application/json")
    assert page.items[0]["score"] != page.items[0]["score"]  # NaN


def _typed_value(kind: pa.DataType) -> st.SearchStrategy[object]:
    if kind == pa.int32():
        return st.integers(-(2**31), 2**31 - 1)
    if kind == pa.int64():
        return st.integers(-(2**63), 2**63 - 1)
    return st.text(max_size=6)


@st.composite
def _well_typed_page(draw: st.DrawFn, feed: str) -> list[dict[str, object]]:
    """Items whose typed values all fit, with fields absent, null, or joined by unknown keys."""
    fields = [(n, k) for n, k in FEEDS[feed].fields if n != "timestamp"]
    rows = []
    for _ in range(draw(st.integers(1, 8))):
        row: dict[str, object] = {"timestamp": draw(CANONICAL_STAMPS)}
        for name, kind in fields:
            choice = draw(st.sampled_from(["value", "value", "null", "absent"]))
            if choice != "absent":
                row[name] = None if choice == "null" else draw(_typed_value(kind))
        for key in draw(st.lists(st.sampled_from(["tag", "family", "n"]), max_size=2)):
            row[key] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=3)))
        rows.append(row)
    return rows


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FEEDS)).flatmap(lambda f: st.tuples(st.just(f), _well_typed_page(f))))
def test_typical_path_finds_every_unknown_key(case: tuple[str, list[dict[str, object]]]) -> None:
    """Well-typed pages take the typical path, and its extra column is the careful one's."""
    feed, items = case
    typical = _typical_table(FEEDS[feed], items)
    assert typical is not None
    assert typical.equals(_careful_table(FEEDS[feed], items))


@pytest.mark.parametrize("stamp", LOOSE_STAMPS)
def test_a_loosely_written_stamp_keeps_its_text(stamp: str) -> None:
    """A stamp strptime would read leniently is placed, and its original text kept in extra."""
    page = [item(ioc=str(i)) for i in range(50)] + [item(timestamp=stamp)]
    for table in (items_to_table(FEEDS["domains"], page), _careful_table(FEEDS["domains"], page)):
        extras = [orjson.loads(e) for e in table.column("extra").to_pylist() if e]
        assert extras == [{"timestamp": stamp}]
