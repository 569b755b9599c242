"""The indicator table's arithmetic, in three queries.

1. :func:`day_partials`: a (feed, day)'s rows -> one partial row per (type, value):
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

from datetime import date
from pathlib import Path

import pyarrow as pa

from harvester.intel.engine import Engine
from harvester.intel.schema import INDICATOR_SCHEMA, PARTIAL_SCHEMA, feed_sources
from harvester.schemas import TIMESTAMP

_DAY_SQL = """
SELECT "{column}" AS value, $feed AS feed, $day::DATE AS day,
       min(ts) AS first_seen, max(ts) AS last_seen, count(*) AS sightings,
       max(severity) AS max_severity, max(confidence) AS max_confidence,
       list_sort(list_distinct(list(ioc))) AS iocs,
       list_sort(list_distinct(list(sample_id))) AS sample_ids
FROM day_rows
WHERE "{column}" IS NOT NULL AND "{column}" <> ''
GROUP BY "{column}"
ORDER BY value
"""

_KEEP_OLD = """
SELECT o.* FROM read_parquet($old, hive_partitioning = false) AS o
ANTI JOIN redone AS r ON o.feed = r.feed AND o.day = r.day
"""

# Distinct pairs first, then plain GROUP BYs: every step is an aggregate DuckDB can
# spill to disk, however many samples or iocs one value has.
_TABLE_SQL = """
WITH p AS (SELECT * FROM read_parquet($files, hive_partitioning = false)),
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


def day_partials(
    engine: Engine, feed: str, day: date, table: pa.Table, out_dir: Path
) -> dict[str, tuple[Path, int]]:
    """Write the partial rows of each type ``feed`` feeds; return type -> (file, rows).

    ``table`` is the day's rows as :func:`prepare_day` leaves them. A type without
    rows that day still gets its (empty) file.
    """
    written = {}
    for kind, column in feed_sources(feed):
        folder = out_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{feed}-{day.isoformat()}.parquet"
        rows = engine.write(
            _DAY_SQL.format(column=column),
            path,
            PARTIAL_SCHEMA,
            params={"feed": feed, "day": day},
            tables={"day_rows": table},
        )
        written[kind] = (path, rows)
    return written


def merge_month(
    engine: Engine,
    old: Path | None,
    redone: list[tuple[str, date]],
    new: list[Path],
    out: Path,
) -> int:
    """Write a month's partials: ``old`` without the ``redone`` (feed, day)s, plus ``new``.

    Returns the rows written; zero means the month's file should go.
    """
    parts: list[str] = []
    params: dict[str, str | list[str]] = {}
    if old is not None:
        parts.append(_KEEP_OLD)
        params["old"] = str(old)
    if new:
        parts.append("SELECT * FROM read_parquet($new, hive_partitioning = false)")
        params["new"] = [str(p) for p in new]
    if not parts:
        return 0
    sql = f"SELECT * FROM ({' UNION ALL BY NAME '.join(parts)}) ORDER BY value, feed, day"
    keys = pa.table(
        {"feed": [f for f, _ in redone], "day": [d for _, d in redone]},
        schema=pa.schema([("feed", pa.string()), ("day", pa.date32())]),
    )
    return engine.write(sql, out, PARTIAL_SCHEMA, params=params, tables={"redone": keys})


def indicator_rows(engine: Engine, partials: list[Path], out: Path) -> int:
    """Write a type's table from all its partial files; return the number of indicators."""
    if not partials:
        return 0
    return engine.write(
        _TABLE_SQL, out, INDICATOR_SCHEMA, params={"files": [str(p) for p in partials]}
    )
