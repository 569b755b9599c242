"""Iceberg test helpers: write a group's day files, read a table back two ways, compare.

Files are written exactly as a group committer would: the simulator's records for the
windows, through :func:`harvester.schemas.items_to_table`, split by UTC day, streamed by
:class:`harvester.iceberg.tables.DataFileWriter` to their final path under the table's
location (local or S3, through the table's file IO). Tables are read back with
pyiceberg's own scan and with DuckDB's ``iceberg_scan``, and compared with the truth as
multisets of rebuilt API items (``lakecheck``'s rules).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from harvester.iceberg.hint import VERSION_NAME_FORMAT
from harvester.iceberg.tables import DataFileWriter, data_file_path
from harvester.schemas import FEEDS, items_to_table
from harvester.sim.data import Dataset

from lakecheck import _canonical, rebuild

Windows = Sequence[tuple[datetime, datetime]]


def day(text: str) -> datetime:
    """Midnight UTC of an ISO date."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def hours(start: datetime, count: int, size: int = 6) -> list[tuple[datetime, datetime]]:
    """``count`` consecutive windows of ``size`` hours from ``start``."""
    step = timedelta(hours=size)
    return [(start + i * step, start + (i + 1) * step) for i in range(count)]


def truth(dataset: Dataset, feed: str, windows: Windows) -> list[dict[str, Any]]:
    """The simulator's items of every window, confidence and severity 0."""
    items: list[dict[str, Any]] = []
    for start, end in windows:
        items += dataset.truth(feed, start, end, confidence=0, severity=0)
    return items


def write_group(
    table: Table, feed: str, items: list[dict[str, Any]], *, row_group_rows: int = 1000
) -> list[str]:
    """One data file per UTC day of ``items`` under ``table``'s location; their paths."""
    if not items:
        return []
    arrow = items_to_table(FEEDS[feed], items)
    days = pc.floor_temporal(arrow.column("timestamp"), unit="day").cast(pa.int64())
    paths = []
    for number in sorted(set(days.to_pylist())):
        part = arrow.filter(pc.equal(days, number))
        the_day = date(1970, 1, 1) + timedelta(seconds=number)
        path = data_file_path(table.location(), the_day, prefix="test")
        with (
            table.io.new_output(path).create() as sink,
            DataFileWriter(sink, feed, row_group_rows=row_group_rows) as writer,
        ):
            # a page at a time, as a harvest streams them
            for offset in range(0, part.num_rows, 300):
                writer.write(part.slice(offset, 300))
        paths.append(path)
    return paths


def _items(arrow: pa.Table) -> list[dict[str, Any]]:
    seconds = pc.divide(arrow.column("timestamp").cast(pa.int64()), 1_000_000)
    arrow = arrow.set_column(0, "timestamp", seconds)
    return [rebuild(row) for row in arrow.to_pylist()]


def pyiceberg_items(table: Table, snapshot_id: int | None = None) -> list[dict[str, Any]]:
    """Every record of ``table`` (at ``snapshot_id``, default current) via pyiceberg's scan."""
    table.refresh()
    scan = table.scan(snapshot_id=snapshot_id)
    return _items(scan.to_arrow())


def duckdb_connection(con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """``con`` (default a new connection) with the iceberg and avro extensions loaded.

    Offline: from the duckdb-ext-iceberg and duckdb-ext-avro packages, as ``lakecheck``
    loads httpfs.
    """
    spec = importlib.util.find_spec("duckdb_ext")
    assert spec is not None and spec.submodule_search_locations, "duckdb-ext-* missing"
    base = Path(next(iter(spec.submodule_search_locations)))
    con = con or duckdb.connect()
    for name in ("avro", "iceberg"):
        found = list(base.rglob(f"{name}.duckdb_extension"))
        assert found, f"duckdb-ext-{name} is not installed"
        con.execute(f"LOAD '{found[0]}'")
    return con


def duckdb_items(
    con: duckdb.DuckDBPyConnection, source: str, *, view: bool = False
) -> list[dict[str, Any]]:
    """Every record via DuckDB: ``source`` is a view name, or a table folder or metadata file."""
    if view:
        relation = f'"{source}"'
    elif source.endswith(".metadata.json"):
        relation = f"iceberg_scan('{source}')"
    else:
        relation = f"iceberg_scan('{source}', version_name_format => '{VERSION_NAME_FORMAT}')"
    cursor = con.execute(f"SELECT * REPLACE (epoch_us(timestamp) AS timestamp) FROM {relation}")
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["timestamp"] //= 1_000_000
    return [rebuild(row) for row in rows]


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]], what: str = "") -> None:
    """Equal as multisets of canonical items; the message says how they differ."""
    have = Counter(_canonical(i) for i in got)
    need = Counter(_canonical(i) for i in want)
    missing, extra = need - have, have - need
    assert not missing and not extra, (
        f"{what}: {sum(missing.values())} missing, {sum(extra.values())} unexpected "
        f"(of {sum(need.values())}); e.g. missing={list(missing)[:1]} extra={list(extra)[:1]}"
    )
