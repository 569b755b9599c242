"""Independent arithmetic for the indicator tests: plain Python over records, DuckDB reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

import duckdb

from harvester.intel.build import BuildOptions, BuildResult, build_indicators
from harvester.intel.manifest_source import IcebergAccess, ManifestDaySource
from harvester.storage import open_store

# The type map, restated here so the test does not trust the code's copy.
SOURCES = {
    "domain": [("domains", "domain")],
    "ip": [("ips", "ip"), ("network_streams", "dst")],
    "url": [("urls", "url")],
    "path": [("paths", "path"), ("artifacts", "path")],
    "sha256": [("artifacts", "artifact_sha256")],
    "md5": [("artifacts", "artifact_md5")],
    "registry_key": [("registry_keys", "registry_key")],
    "sample_sha256": [
        (feed, "sample_sha256")
        for feed in (
            "ips", "domains", "urls", "artifacts", "paths", "network_streams", "registry_keys"
        )
    ],
}

Row = tuple[Any, ...]


def _stamp(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def expected_table(items_by_feed: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, set[Row]]:
    """Per type, {(value, first, last, sightings, samples, max_sev, max_conf, iocs, feeds)}."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, sources in SOURCES.items():
        for feed, column in sources:
            for item in items_by_feed.get(feed, []):
                value = item.get(column)
                if value is None or value == "":
                    continue
                ts = item["timestamp"] if isinstance(item["timestamp"], int) else _stamp(
                    item["timestamp"]
                )
                row = acc.setdefault(
                    (kind, value),
                    {"first": ts, "last": ts, "n": 0, "samples": set(), "sev": None,
                     "conf": None, "iocs": set(), "feeds": set()},
                )  # fmt: skip
                row["first"], row["last"] = min(row["first"], ts), max(row["last"], ts)
                row["n"] += 1
                if item.get("sample_id") is not None:
                    row["samples"].add(item["sample_id"])
                for key, name in (("sev", "severity"), ("conf", "confidence")):
                    if item.get(name) is not None:
                        row[key] = item[name] if row[key] is None else max(row[key], item[name])
                if item.get("ioc") is not None:
                    row["iocs"].add(item["ioc"])
                row["feeds"].add(feed)
    out: dict[str, set[Row]] = {kind: set() for kind in SOURCES}
    for (kind, value), r in acc.items():
        out[kind].add(
            (value, r["first"], r["last"], r["n"], len(r["samples"]), r["sev"], r["conf"],
             tuple(sorted(r["iocs"])), tuple(sorted(r["feeds"])))
        )  # fmt: skip
    return out


def table_rows(root: str, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, set[Row]]:
    """The indicator table as DuckDB reads it (Hive partitions), by type."""
    con = con or duckdb.connect()
    glob = f"{root.rstrip('/')}/indicators/*/*.parquet"
    out: dict[str, set[Row]] = {kind: set() for kind in SOURCES}
    try:
        rows = con.execute(
            "SELECT type, value, epoch(first_seen)::BIGINT, epoch(last_seen)::BIGINT, sightings, "
            "samples, max_severity, max_confidence, iocs, feeds "
            "FROM read_parquet(?, hive_partitioning = true)",
            [glob],
        ).fetchall()
    except duckdb.IOException:
        return out
    for kind, *rest in rows:
        rest[-2], rest[-1] = tuple(rest[-2]), tuple(rest[-1])
        out[kind].add(tuple(rest))
    return out


def lake_items(root: str, feeds: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every row of the lake's feeds, via DuckDB, with timestamps as epoch seconds."""
    from lakecheck import lake_rows

    return {feed: lake_rows(root, feed) for feed in feeds}


def build(
    root: str,
    *,
    s3_endpoint_url: str | None = None,
    catalog: str | None = None,
    namespace: str | None = None,
    **options: Any,
) -> BuildResult:
    """``build_indicators`` on the lake at ``root``, as the CLI runs it.

    ``source``, if given, is called with the store and the Iceberg access to make the
    :class:`DaySource`.
    """
    iceberg = IcebergAccess(
        out=root, catalog=catalog, namespace=namespace, s3_endpoint_url=s3_endpoint_url
    )

    async def go() -> BuildResult:
        store = open_store(root, s3_endpoint_url=s3_endpoint_url)
        try:
            source = options.pop("source", None)
            return await build_indicators(
                store,
                source=source(store, iceberg) if source else None,
                options=BuildOptions(**options),
                iceberg=iceberg,
            )
        finally:
            await store.close()

    return asyncio.run(go())


class CountingSource(ManifestDaySource):
    """The manifest source, remembering which (feed, day)s were read; fails on request."""

    def __init__(
        self, store: Any, iceberg: IcebergAccess | None = None, *, fail_after: int | None = None
    ) -> None:
        super().__init__(store, iceberg=iceberg)
        self.reads: list[tuple[str, date]] = []
        self.fail_after = fail_after

    async def read_day(self, feed: str, day: date, columns: Any) -> Any:
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.reads.append((feed, day))
        return await super().read_day(feed, day, columns)


def write_lake(root: str, items_by_feed: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """Write items straight into a local lake's Hive layout, a file per (feed, day)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from harvester.schemas import FEEDS, items_to_table

    for feed, items in items_by_feed.items():
        days: dict[str, list[Mapping[str, Any]]] = {}
        for item in items:
            days.setdefault(str(item["timestamp"])[:10], []).append(item)
        for day, found in days.items():
            folder = Path(root) / feed / f"dt={day}"
            folder.mkdir(parents=True, exist_ok=True)
            table = items_to_table(FEEDS[feed], found)
            pq.write_table(table, folder / "part-synthetic.parquet", compression="zstd")


def export(root: str, fmt: str, to: str, *, s3_endpoint_url: str | None = None, **opts: Any) -> Any:
    """``export_indicators`` on the lake at ``root``; ``opts`` are ExportFilter's, and tlp."""
    from harvester.intel.export import ExportOptions, export_indicators
    from harvester.intel.filters import ExportFilter

    tlp = opts.pop("tlp", "white")
    options = ExportOptions(format=fmt, to=to, tlp=tlp, filter=ExportFilter(**opts))

    async def go() -> Any:
        store = open_store(root, s3_endpoint_url=s3_endpoint_url)
        try:
            return await export_indicators(store, options, s3_endpoint_url=s3_endpoint_url)
        finally:
            await store.close()

    return asyncio.run(go())
