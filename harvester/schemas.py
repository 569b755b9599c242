"""The seven IOC feeds: their fields, filters and Arrow schemas, and items -> Arrow.

Each feed is one table. Its columns are the common fields, the feed's own fields and a
string column ``extra`` that holds, as a JSON object, anything the schema does not know
and any value whose type does not fit its column. Nothing the API sends is dropped.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, cached_property, lru_cache
from itertools import repeat
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from harvester.errors import DataError
from harvester.windows import API_FORMAT, parse_api

TIMESTAMP = pa.timestamp("s", tz="UTC")
INT = pa.int32()
BIGINT = pa.int64()
STR = pa.string()

COMMON: tuple[tuple[str, pa.DataType], ...] = (
    ("timestamp", TIMESTAMP),
    ("ioc", STR),
    ("confidence", INT),
    ("severity", INT),
    ("sample_id", STR),
    ("sample_sha256", STR),
)


@dataclass(frozen=True, kw_only=True)
class Feed:
    """One IOC feed: its API name, its own typed fields and its result restrictions."""

    name: str
    own: tuple[tuple[str, pa.DataType], ...]
    restrictions: tuple[str, ...]

    @property
    def fields(self) -> tuple[tuple[str, pa.DataType], ...]:
        """Typed fields in column order: common first, then the feed's own."""
        return COMMON + self.own

    @cached_property
    def names(self) -> frozenset[str]:
        """The names of the typed fields."""
        return frozenset(n for n, _ in self.fields)

    @cached_property
    def schema(self) -> pa.Schema:
        """The Parquet schema of this feed's table (without the ``dt`` partition)."""
        return pa.schema([pa.field(n, t) for n, t in self.fields] + [pa.field("extra", STR)])


FEEDS: dict[str, Feed] = {
    f.name: f
    for f in (
        Feed(name="ips", own=(("ip", STR), ("port", INT)), restrictions=("ip",)),
        Feed(name="domains", own=(("domain", STR),), restrictions=("domain",)),
        Feed(name="urls", own=(("url", STR),), restrictions=("url",)),
        Feed(
            name="artifacts",
            own=(("aid", BIGINT), ("artifact_md5", STR), ("artifact_sha256", STR), ("path", STR)),
            restrictions=("sha256", "sha1", "md5", "path"),
        ),
        Feed(name="paths", own=(("path", STR),), restrictions=("path",)),
        Feed(
            name="network_streams",
            own=(("src", STR), ("src_port", INT), ("dst", STR), ("dst_port", INT)),
            restrictions=("ip", "port"),
        ),
        Feed(name="registry_keys", own=(("registry_key", STR),), restrictions=("registry_key",)),
    )
}

_INT_RANGE = {INT: (-(2**31), 2**31 - 1), BIGINT: (-(2**63), 2**63 - 1)}


# Exact types: a bool is not an int, and a float is not one either.
_ALLOWED = {
    INT: {int, type(None)},
    BIGINT: {int, type(None)},
    STR: {str, type(None)},
    TIMESTAMP: {str, type(None)},
}


def _fits(value: Any, kind: pa.DataType) -> bool:
    if type(value) not in _ALLOWED[kind]:
        return False
    if type(value) is int:
        low, high = _INT_RANGE[kind]
        return low <= value <= high
    return True


def warm() -> None:
    """Make pyarrow's first conversion of Python objects now (blocking: for a thread).

    That first conversion imports pandas, when it is installed, only to ask whether the
    objects are pandas ones: 0.2 s on a 2-core machine, which a run would otherwise spend
    on its event loop, converting its first page.
    """
    pa.array([0])


def items_to_table(feed: Feed, items: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Turn API items into a typed Arrow table of ``feed``'s schema.

    Values that fit their column go there. Unknown keys, and values whose type does not
    fit (a confidence sent as ``"95"``), go into ``extra`` under their own key, so the
    original item can always be rebuilt. An item without a parseable ``timestamp``
    cannot be placed in a window, and a string Arrow cannot hold (a lone UTF-16
    surrogate, which Parquet's UTF-8 cannot encode) cannot be stored: both raise
    :class:`DataError`.
    """
    try:
        return _items_to_table(feed, items)
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{feed.name}: a value holds {exc.object[exc.start : exc.end]!a}, a lone UTF-16 "
            "surrogate that Parquet cannot store; the window cannot be archived"
        ) from exc
    except pa.ArrowException as exc:
        raise DataError(f"{feed.name}: an item cannot be converted to Arrow: {exc}") from exc


def _items_to_table(feed: Feed, items: Sequence[Mapping[str, Any]]) -> pa.Table:
    table = _typical_table(feed, items)
    if table is not None:
        return table
    names = feed.names
    clean: list[Mapping[str, Any]] = []
    odd: list[Mapping[str, Any]] = []
    for item in items:
        (clean if type(item) is dict and names.issuperset(item) else odd).append(item)
    table = _fast_table(feed, clean)
    if isinstance(table, set):  # some values do not fit their columns: those rows go slow
        odd += [clean[i] for i in sorted(table)]
        clean = [item for i, item in enumerate(clean) if i not in table]
        table = _fast_table(feed, clean)
        if isinstance(table, set):  # cannot happen, but never guess: do it all carefully
            return _careful_table(feed, items)
    if not odd:
        return table
    return pa.concat_tables([table, _careful_table(feed, odd)])


def _typical_table(feed: Feed, items: Sequence[Mapping[str, Any]]) -> pa.Table | None:
    """The usual page in a few C-level passes, or None if any value needs a closer look.

    Every value of a typed field must have its column's exact type and every timestamp
    the documented form; unknown keys are allowed and go to ``extra`` (a few rows per
    page carry them). Anything else sends the page to the row-by-row paths, which agree
    with this one exactly.
    """
    count = len(items)
    if not count or set(map(type, items)) != {dict}:
        return None
    dicts = cast(Sequence[dict[str, Any]], items)
    layout, integers = _typical_layout(feed)
    try:
        # One strict pass over the items for every typed field: text refuses a number or
        # a bool, an integer refuses text, a bool and anything outside its column's range.
        # Unknown keys are ignored here and picked up for `extra` below.
        struct = pa.array(dicts, type=layout)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    # ... but integer conversion truncates a float (95.5 becomes 95): refuse any float.
    for name in integers:
        if float in set(map(type, map(dict.get, dicts, repeat(name)))):
            return None
    columns = struct.flatten()
    stamps = _canonical_stamps(columns[0])
    if stamps is None:
        return None
    columns[0] = stamps
    columns.append(_extras(feed, dicts, columns))
    return pa.Table.from_arrays(columns, schema=feed.schema)


def _canonical_stamps(text: pa.Array) -> pa.Array | None:
    """Parse stamps that are all ``YYYY-MM-DDTHH:MM:SSZ``, or None if any is not.

    Twenty bytes each is read off the offsets buffer. Arrow's ISO 8601 cast then refuses
    anything but digits where digits belong and any second that does not exist (Feb 30,
    23:59:60), where ``strptime`` would quietly read ``2024-1-01T 00:00:00Z`` or roll
    Feb 30 over to March; the cast also takes a space for the ``T``, so a space anywhere
    refuses the page. One compute call a page.
    """
    if text.null_count or text.offset:
        return None
    offsets, data = text.buffers()[1:3]
    expected = _twenty_byte_offsets(len(text))
    if offsets is None or data is None or offsets.size < expected.size:
        return None
    if not offsets.slice(0, expected.size).equals(expected):
        return None
    if b" " in data.slice(0, 20 * len(text)).to_pybytes():
        return None
    try:
        return text.cast(TIMESTAMP)
    except pa.ArrowInvalid:
        return None


@lru_cache(maxsize=16)  # full pages share one size; 16 bounds the memory at big limits
def _twenty_byte_offsets(count: int) -> pa.Buffer:
    """The offsets buffer of ``count`` strings of 20 bytes each."""
    return pa.py_buffer(array("i", range(0, 20 * count + 1, 20)))


@cache
def _typical_layout(feed: Feed) -> tuple[pa.StructType, tuple[str, ...]]:
    """The feed's typed fields as one struct (timestamps as text), and its integer fields."""
    assert feed.fields[0][0] == "timestamp"
    layout = pa.struct([(n, STR if kind == TIMESTAMP else kind) for n, kind in feed.fields])
    return layout, tuple(n for n, kind in feed.fields if kind in _INT_RANGE)


def _extras(feed: Feed, items: Sequence[dict[str, Any]], columns: Sequence[pa.Array]) -> pa.Array:
    """The ``extra`` column of items whose typed values all fit: their unknown keys.

    Every non-null typed value is a key the item has. So an item with no null typed
    value and exactly as many keys as the feed has fields has no unknown key; a field
    no item of the page has (artifacts lack ``sample_sha256``) just counts one less.
    Only the other rows -- a few per page -- are looked at one by one.
    """
    names = feed.names
    width = len(names)
    rows: set[int] = set()
    for column in columns:
        if column.null_count == len(column):
            width -= 1
        elif column.null_count:
            rows.update(pc.indices_nonzero(column.is_null()).to_pylist())
    rows.update([row for row, size in enumerate(map(len, items)) if size != width])
    extras: list[str | None] = [None] * len(items)
    for row in rows:
        item = items[row]
        if not names.issuperset(item):
            extras[row] = _to_json({k: v for k, v in item.items() if k not in names})
    return pa.array(extras, type=STR)


def _fast_table(feed: Feed, items: Sequence[Mapping[str, Any]]) -> pa.Table | set[int]:
    """Column-at-a-time conversion of items whose keys are all known.

    Returns the table, or the rows whose values do not fit their columns (for the
    careful path). Checks are by exact type: a ``bool`` is not an ``int``, and pyarrow
    would quietly truncate ``95.5`` to ``95``. So the two paths always agree.
    """
    arrays = []
    bad: set[int] = set()
    for name, kind in feed.fields:
        values = [item.get(name) for item in items]
        if kind == TIMESTAMP:
            parsed = _fast_timestamps(values, bad)
            if parsed is not None:
                arrays.append(parsed)
            continue
        if not set(map(type, values)) <= _ALLOWED[kind]:
            bad.update(i for i, v in enumerate(values) if type(v) not in _ALLOWED[kind])
            continue
        try:
            arrays.append(pa.array(values, type=kind))
        except (pa.ArrowInvalid, OverflowError):
            low, high = _INT_RANGE[kind]
            bad.update(i for i, v in enumerate(values) if v is not None and not low <= v <= high)
    if bad:
        return bad
    arrays.append(pa.nulls(len(items), type=STR))
    return pa.Table.from_arrays(arrays, schema=feed.schema)


def _fast_timestamps(values: list[Any], bad: set[int]) -> pa.Array | None:
    """Parse canonical ``YYYY-MM-DDTHH:MM:SSZ`` stamps; note the rows that are not."""
    if not set(map(type, values)) <= {str}:
        bad.update(i for i, v in enumerate(values) if type(v) is not str)
        return None
    stamps = _canonical_stamps(pa.array(values, type=STR))
    if stamps is not None:
        return stamps
    bad.update(i for i, value in enumerate(values) if not _canonical_time(value))
    if not bad:
        bad.update(range(len(values)))  # Arrow and Python disagree: take no chances
    return None


def _careful_table(feed: Feed, items: Sequence[Mapping[str, Any]]) -> pa.Table:
    types = dict(feed.fields)
    names = list(types)
    columns: dict[str, list[Any]] = {n: [None] * len(items) for n in names}
    extras: list[str | None] = [None] * len(items)
    for row, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DataError(f"{feed.name}: item {row} is {type(item).__name__}, expected object")
        leftover: dict[str, Any] | None = None
        for key, value in item.items():
            kind = types.get(key)
            if kind is not None and _fits(value, kind):
                columns[key][row] = value
                if kind == TIMESTAMP and value is not None and not _canonical_time(value):
                    # Parsed for the column, but the original text is kept: lossless.
                    leftover = leftover or {}
                    leftover[key] = value
            else:
                leftover = leftover or {}
                leftover[key] = value
        if leftover:
            extras[row] = _to_json(leftover)
    arrays = [_typed(feed, n, t, columns[n]) for n, t in feed.fields]
    arrays.append(pa.array(extras, type=STR))
    return pa.Table.from_arrays(arrays, schema=feed.schema)


def _to_json(value: dict[str, Any]) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library can write it
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _canonical_time(value: str) -> bool:
    """Exactly the documented form, naming a second that exists."""
    try:
        parse_api(value)
    except ValueError:
        return False
    return True


def _typed(feed: Feed, name: str, kind: pa.DataType, values: list[Any]) -> pa.Array:
    if kind != TIMESTAMP:
        return pa.array(values, type=kind)
    if any(v is None for v in values):
        raise DataError(f"{feed.name}: an item has no timestamp; it cannot be placed in a window")
    return parse_timestamps(feed.name, pa.array(values, type=STR))


def parse_timestamps(feed: str, text: pa.Array) -> pa.Array:
    """Parse API timestamps (``YYYY-MM-DDTHH:MM:SSZ``) to ``timestamp[s, UTC]``.

    The documented form is parsed vectorised; otherwise each stamp on its own, by
    Python's ISO parser (fractions, offsets) or, failing that, as loosely as
    ``strptime`` reads the documented form. One that neither can read raises
    :class:`DataError`.
    """
    try:
        return pc.strptime(text, format=API_FORMAT, unit="s").cast(TIMESTAMP)
    except pa.ArrowInvalid:
        pass
    return pa.array([_seconds(feed, v) for v in text.to_pylist()], type=pa.int64()).cast(TIMESTAMP)


def _seconds(feed: str, value: str) -> int:
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        try:
            loose = pc.strptime(pa.array([value]), format=API_FORMAT, unit="s")
        except pa.ArrowInvalid:
            raise DataError(f"{feed}: timestamp {value!r} is not ISO 8601") from None
        return int(loose.cast(pa.int64())[0].as_py())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
