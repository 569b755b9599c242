"""The indicator table: its types, where each comes from, its columns and its objects.

One row per (type, value). The ``type`` is the Hive partition key, so the table reads
like the feeds (``read_parquet('lake/indicators/*/*.parquet', hive_partitioning=1)``).

Objects, relative to the lake root::

    indicators/type={type}/indicators.parquet          the table: one object per type
    _indicators/partials/type={type}/month=YYYY-MM.parquet
                                                       per (feed, day, value) aggregates
    _indicators/state.json                             which (feed, day) versions they hold

The builder's own objects sit under ``_indicators/``, outside the table's folder, so a
reader pointed at ``indicators/`` (Athena's LOCATION, a Spark path, a ``**`` glob) sees
the table and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from types import MappingProxyType

import pyarrow as pa

from harvester.schemas import FEEDS, TIMESTAMP

# The order exports follow.
TYPES: tuple[str, ...] = (
    "domain",
    "ip",
    "url",
    "path",
    "sha256",
    "md5",
    "registry_key",
    "sample_sha256",
)

# type -> the (feed, column) pairs whose values are indicators of that type.
TYPE_SOURCES: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "domain": (("domains", "domain"),),
        "ip": (("ips", "ip"), ("network_streams", "dst")),
        "url": (("urls", "url"),),
        "path": (("paths", "path"), ("artifacts", "path")),
        "sha256": (("artifacts", "artifact_sha256"),),
        "md5": (("artifacts", "artifact_md5"),),
        "registry_key": (("registry_keys", "registry_key"),),
        # the analysed sample itself; always null on artifacts, which is harmless
        "sample_sha256": tuple((feed, "sample_sha256") for feed in FEEDS),
    }
)

# Columns every feed contributes to an indicator's aggregates.
RECORD_COLUMNS: tuple[str, ...] = ("timestamp", "ioc", "severity", "confidence", "sample_id")

INDICATOR_SCHEMA = pa.schema(
    [
        pa.field("value", pa.string(), nullable=False),
        pa.field("first_seen", TIMESTAMP, nullable=False),
        pa.field("last_seen", TIMESTAMP, nullable=False),
        pa.field("sightings", pa.int64(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("max_severity", pa.int32()),
        pa.field("max_confidence", pa.int32()),
        pa.field("iocs", pa.list_(pa.string()), nullable=False),
        pa.field("feeds", pa.list_(pa.string()), nullable=False),
    ]
)
"""The table's columns (``type`` comes from the folder name, as ``dt`` does for feeds)."""

PARTIAL_SCHEMA = pa.schema(
    [
        pa.field("value", pa.string(), nullable=False),
        pa.field("feed", pa.string(), nullable=False),
        pa.field("day", pa.date32(), nullable=False),
        pa.field("first_seen", pa.int64(), nullable=False),  # epoch seconds
        pa.field("last_seen", pa.int64(), nullable=False),
        pa.field("sightings", pa.int64(), nullable=False),
        pa.field("max_severity", pa.int32()),
        pa.field("max_confidence", pa.int32()),
        pa.field("iocs", pa.list_(pa.string()), nullable=False),
        pa.field("sample_ids", pa.list_(pa.string()), nullable=False),
    ]
)
"""One (value, feed, day)'s aggregates, with its distinct sample ids: every column of the
table can be recomputed from these exactly, distinct counts included."""



@dataclass(frozen=True, kw_only=True, slots=True)
class Indicator:
    """One row of the table, as the exporters see it."""

    type: str
    value: str
    first_seen: datetime
    last_seen: datetime
    sightings: int
    samples: int
    max_severity: int | None
    max_confidence: int | None
    iocs: tuple[str, ...]
    feeds: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.type not in TYPE_SOURCES:
            raise ValueError(f"unknown indicator type {self.type!r}")
        if self.first_seen.tzinfo is None or self.last_seen.tzinfo is None:
            raise ValueError("first_seen and last_seen must be timezone-aware")


STATE_KEY = "_indicators/state.json"
PARTIALS_PREFIX = "_indicators/partials/"
TABLE_PREFIX = "indicators/"
TABLE_FILE = "indicators.parquet"


def feed_sources(feed: str) -> tuple[tuple[str, str], ...]:
    """The (type, column) pairs ``feed`` feeds, in :data:`TYPES` order."""
    return tuple(
        (kind, column) for kind in TYPES for source, column in TYPE_SOURCES[kind] if source == feed
    )


def feed_columns(feed: str) -> tuple[str, ...]:
    """The columns to read from a day of ``feed``: the record's and its value columns."""
    own = dict.fromkeys(column for _, column in feed_sources(feed))
    return RECORD_COLUMNS + tuple(own)


def types_of(feed: str) -> tuple[str, ...]:
    """The types ``feed`` feeds."""
    return tuple(kind for kind, _ in feed_sources(feed))


def month_of(day: date) -> str:
    """``YYYY-MM``: the partial file a day's aggregates live in."""
    return f"{day.year:04d}-{day.month:02d}"


def table_key(kind: str) -> str:
    """The object holding type ``kind``'s rows of the table."""
    return f"{TABLE_PREFIX}type={kind}/{TABLE_FILE}"


def partial_key(kind: str, month: str) -> str:
    """The object holding type ``kind``'s partial aggregates of ``month``."""
    return f"{PARTIALS_PREFIX}type={kind}/month={month}.parquet"


def parse_table_key(key: str) -> str | None:
    """The type of a table object's key, or None for anything else."""
    folder, _, name = key.removeprefix(TABLE_PREFIX).partition("/")
    kind = folder.removeprefix("type=")
    if key.startswith(TABLE_PREFIX) and name == TABLE_FILE and kind in TYPE_SOURCES:
        return kind
    return None


def parse_partial_key(key: str) -> tuple[str, str] | None:
    """``(type, month)`` of a partial object's key, or None for anything else."""
    rest = key.removeprefix(PARTIALS_PREFIX)
    if rest == key:
        return None
    parts = rest.split("/")
    if len(parts) != 2 or not parts[0].startswith("type=") or not parts[1].startswith("month="):
        return None
    kind, month = parts[0].removeprefix("type="), parts[1].removeprefix("month=")
    if kind not in TYPE_SOURCES or not month.endswith(".parquet"):
        return None
    return kind, month.removesuffix(".parquet")


def _check() -> None:
    """The type map must name real columns, and a feed one column per type at most."""
    for kind, sources in TYPE_SOURCES.items():
        feeds = [feed for feed, _ in sources]
        if len(feeds) != len(set(feeds)):
            raise AssertionError(f"type {kind} takes two columns of one feed")
        for feed, column in sources:
            schema = FEEDS[feed].schema
            if column not in schema.names or schema.field(column).type != pa.string():
                raise AssertionError(f"type {kind}: {feed}.{column} is not a string column")
    if set(TYPE_SOURCES) != set(TYPES):
        raise AssertionError("TYPES and TYPE_SOURCES disagree")


_check()
