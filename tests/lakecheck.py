"""Read a lake back with DuckDB and compare it with what the simulator holds; read Athena DDL."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson

from harvester.schemas import FEEDS

TABLE = re.compile(
    r"CREATE EXTERNAL TABLE IF NOT EXISTS `(?P<db>[^`]+)`\.`(?P<feed>[^`]+)` \(\n"
    r"(?P<columns>.*?)\n\)\nPARTITIONED BY \(`dt` string\)\nSTORED AS PARQUET\n"
    r"LOCATION '(?P<location>[^']+)'\nTBLPROPERTIES \(\n(?P<properties>.*?)\n\);",
    re.S,
)
COLUMN = re.compile(r"^  `(?P<name>[^`]+)` (?P<type>\w+),?$")
PROPERTY = re.compile(r"^  '(?P<key>[^']+)'='(?P<value>[^']*)',?$")


def _canonical(item: dict[str, Any]) -> bytes:
    """An item with null values dropped (Parquet cannot tell null from missing)."""
    return orjson.dumps(
        {k: v for k, v in item.items() if v is not None}, option=orjson.OPT_SORT_KEYS
    )


def lake_rows(
    root: str, feed: str, *, con: duckdb.DuckDBPyConnection | None = None
) -> list[dict[str, Any]]:
    """Every row of ``feed`` in the lake at ``root`` (a folder or s3:// URL), via DuckDB."""
    con = con or duckdb.connect()
    glob = f"{root.rstrip('/')}/{feed}/*/*.parquet"
    try:
        relation = con.execute(
            "SELECT * REPLACE (epoch(timestamp)::BIGINT AS timestamp), dt::VARCHAR AS dt "
            "FROM read_parquet(?, hive_partitioning = true, union_by_name = false)",
            [glob],
        )
    except duckdb.IOException:
        return []  # no file at all: an empty table
    names = [d[0] for d in relation.description]
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def rebuild(row: dict[str, Any]) -> dict[str, Any]:
    """The API item a lake row came from: typed columns plus what extra kept."""
    item = {k: v for k, v in row.items() if k not in ("extra", "dt") and v is not None}
    item["timestamp"] = datetime.fromtimestamp(row["timestamp"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if row.get("extra"):
        item.update(orjson.loads(row["extra"]))
    return item


def assert_lake_exact(
    root: str,
    truth: dict[str, list[dict[str, Any]]],
    *,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, int]:
    """Assert the lake holds exactly ``truth`` (feed -> items) as a multiset, rightly partitioned.

    Returns the row count per feed.
    """
    counts = {}
    for feed, items in truth.items():
        rows = lake_rows(root, feed, con=con)
        for row in rows:
            day = datetime.fromtimestamp(row["timestamp"], UTC).date().isoformat()
            assert row["dt"] == day, f"{feed}: row of {day} stored under dt={row['dt']}"
        got = Counter(_canonical(rebuild(r)) for r in rows)
        want = Counter(_canonical(i) for i in items)
        missing = want - got
        extra = got - want
        assert not missing and not extra, (
            f"{feed}: lake differs from the simulator: {sum(missing.values())} missing, "
            f"{sum(extra.values())} unexpected (of {sum(want.values())}); e.g. "
            f"missing={list(missing)[:1]} unexpected={list(extra)[:1]}"
        )
        counts[feed] = len(rows)
    return counts


def feeds_all() -> list[str]:
    """All feed names."""
    return list(FEEDS)


def duckdb_for_s3(endpoint_url: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads s3:// from a local S3 server via httpfs (offline)."""
    import importlib.util
    from pathlib import Path
    from urllib.parse import urlsplit

    spec = importlib.util.find_spec("duckdb_ext")
    assert spec is not None and spec.submodule_search_locations, "duckdb-ext-httpfs missing"
    found = list(Path(next(iter(spec.submodule_search_locations))).rglob("httpfs.duckdb_extension"))
    con = duckdb.connect()
    con.execute(f"LOAD '{found[0]}'")
    endpoint = urlsplit(endpoint_url)
    con.execute(
        "CREATE SECRET (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
        f"ENDPOINT '{endpoint.netloc}', URL_STYLE 'path', USE_SSL false)"
    )
    return con


def athena_tables(sql: str) -> dict[str, dict[str, object]]:
    """Per feed: database, location, columns [(name, type)] and properties of Athena DDL."""
    tables: dict[str, dict[str, object]] = {}
    for match in TABLE.finditer(sql):
        columns = [COLUMN.match(line) for line in match["columns"].splitlines()]
        properties = [PROPERTY.match(line) for line in match["properties"].splitlines()]
        assert all(columns) and all(properties), match.group(0)
        tables[match["feed"]] = {
            "db": match["db"],
            "location": match["location"],
            "columns": [(c["name"], c["type"]) for c in columns if c],
            "properties": {p["key"]: p["value"] for p in properties if p},
        }
    return tables
