"""The indicator table's arithmetic, in three queries.

1. :func:`batch_partials`: (feed, day)s' rows -> one partial row per (type, value):
   first and last stamp, sightings, maxima, the distinct iocs and the distinct
   ``sample_id``s. Null and empty values are no indicators.
2. :func:`merge_month`: a month's partial file, with the rows of the (feed, day)s
   being redone taken out and their new rows put in.
3. :func:`indicator_rows`: all partial files of a type -> the table. Minima, maxima
   and sums combine across days as they are; distinct samples and iocs are counted
   from the distinct (value, sample_id) and (value, ioc) pairs the partials keep, so
   the result equals a computation over every record at once.

Every query streams into a Parquet file through :class:`~harvester.intel.engine.Engine`,
so no result is ever held whole in memory. Rows come out sorted by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pyarrow as pa

from harvester.intel.engine import Engine
from harvester.intel.schema import INDICATOR_SCHEMA, PARTIAL_SCHEMA, feed_sources
from harvester.schemas import TIMESTAMP

_BATCH_SQL = """
SELECT type, value, feed, day,
       min(ts) AS first_seen, max(ts) AS last_seen, count(*) AS sightings,
       max(severity) AS max_severity, max(confidence) AS max_confidence,
       list_sort(list_distinct(list(ioc))) AS iocs,
       list_sort(list_distinct(list(sample_id))) AS sample_ids
FROM sightings
WHERE value IS NOT NULL AND value <> ''
GROUP BY type, value, feed, day
"""
_RECORD = ("ts", "ioc", "severity", "confidence", "sample_id")
BATCH_SCHEMA = pa.schema([pa.field("type", pa.string(), nullable=False), *PARTIAL_SCHEMA])
"""Partial rows of several types at once, as a batch of days produces them."""

_KEEP_OLD = """
SELECT o.* FROM read_parquet($old, hive_partitioning = false) AS o
ANTI JOIN redone AS r ON o.feed = r.feed AND o.day = r.day
"""

# Distinct pairs first, then plain GROUP BYs: every step is an aggregate DuckDB can
# spill to disk, however many samples or iocs one value has.
_TABLE_SQL = """
WITH p AS (
    SELECT * FROM read_parquet($files, hive_partitioning = false)
    WHERE hash(value) % $buckets = $bucket
),
totals AS (
    SELECT value, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           sum(sightings)::BIGINT AS sightings,
           max(max_severity) AS max_severity, max(max_confidence) AS max_confidence,
           list_sort(list_distinct(list(feed))) AS feeds
    FROM p GROUP BY value
),
sample_pairs AS (SELECT DISTINCT value, unnest(sample_ids) AS sample_id FROM p),
samples AS (SELECT value, count(*) AS samples FROM sample_pairs GROUP BY value),
ioc_pairs AS (SELECT DISTINCT value, unnest(iocs) AS ioc FROM p),
iocs AS (SELECT value, list_sort(list(ioc)) AS iocs FROM ioc_pairs GROUP BY value)
SELECT t.value, t.first_seen, t.last_seen, t.sightings, coalesce(s.samples, 0) AS samples,
       t.max_severity, t.max_confidence, coalesce(i.iocs, []::VARCHAR[]) AS iocs, t.feeds
FROM totals AS t
LEFT JOIN samples AS s ON s.value = t.value
LEFT JOIN iocs AS i ON i.value = t.value
ORDER BY t.value
"""


def prepare_day(table: pa.Table) -> pa.Table:
    """A day's rows with ``timestamp`` as epoch seconds in ``ts`` (DuckDB then sees no zone)."""
    seconds = table.column("timestamp").cast(TIMESTAMP).cast(pa.int64())
    return table.drop_columns(["timestamp"]).append_column("ts", seconds)


def sightings(feed: str, day: date, table: pa.Table) -> list[pa.Table]:
    """One (feed, day)'s rows as sightings: (type, value, feed, day) and the record's fields.

    ``table`` is as :func:`prepare_day` leaves it; each value column of the feed gives
    one table, of its type.
    """
    rows = table.num_rows
    fixed = {
        "feed": pa.repeat(feed, rows),
        "day": pa.repeat(pa.scalar(day, pa.date32()), rows),
    }
    return [
        pa.table(
            {
                "type": pa.repeat(kind, rows),
                "value": table.column(column),
                **fixed,
                **{name: table.column(name) for name in _RECORD},
            }
        )
        for kind, column in feed_sources(feed)
    ]


def batch_partials(
    engine: Engine, days: Sequence[tuple[str, date, pa.Table]], out: Path
) -> int:
    """Write the partial rows of a batch of (feed, day, rows) for every type; return them.

    One GROUP BY over the whole batch; ``rows`` as :func:`prepare_day` leaves them.
    """
    parts = [part for feed, day, table in days for part in sightings(feed, day, table)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not parts:
        return 0
    combined = pa.concat_tables(parts, promote_options="permissive")
    return engine.write(_BATCH_SQL, out, BATCH_SCHEMA, tables={"sightings": combined})


def merge_month(
    engine: Engine,
    kind: str,
    old: Path | None,
    redone: list[tuple[str, date]],
    new: list[Path],
    out: Path,
) -> int:
    """Write a month of type ``kind``: ``old`` less the ``redone`` days, plus ``new``'s rows.

    ``new`` are batch files of :func:`batch_partials`, holding every type. Returns the
    rows written; zero means the month's file should go.
    """
    parts: list[str] = []
    params: dict[str, str | list[str]] = {}
    if old is not None:
        parts.append(_KEEP_OLD)
        params["old"] = str(old)
    if new:
        parts.append(
            "SELECT * EXCLUDE (type) FROM read_parquet($new, hive_partitioning = false) "
            "WHERE type = $type"
        )
        params["new"] = [str(p) for p in new]
        params["type"] = kind
    if not parts:
        return 0
    sql = f"SELECT * FROM ({' UNION ALL BY NAME '.join(parts)}) ORDER BY value, feed, day"
    keys = pa.table(
        {"feed": [f for f, _ in redone], "day": [d for _, d in redone]},
        schema=pa.schema([("feed", pa.string()), ("day", pa.date32())]),
    )
    return engine.write(sql, out, PARTIAL_SCHEMA, params=params, tables={"redone": keys})


def indicator_rows(engine: Engine, partials: list[Path], out: Path, *, buckets: int = 1) -> int:
    """Write a type's table from all its partial files; return the number of indicators.

    The values are cut into ``buckets`` by a hash, and each bucket is aggregated on its
    own: the joins of distinct samples and iocs hold lists that DuckDB cannot spill, so
    this is what bounds their memory. Rows come out by bucket, then by value.
    """
    if not partials:
        return 0
    files = [str(p) for p in partials]
    queries = [
        (_TABLE_SQL, {"files": files, "buckets": buckets, "bucket": bucket})
        for bucket in range(buckets)
    ]
    return engine.write_all(queries, out, INDICATOR_SCHEMA)
