"""The indicator table driven by the lake's manifest, in either table format.

Incremental builds through more days, a ``--force`` re-harvest, a ``--lookback`` with
late records and a stricter re-harvest equal the independent computation and a full
rebuild, on a Hive lake and on an Iceberg lake; a build with nothing new reads the
manifest's head and the builder's state, nothing else, whatever the history; a file a
killed run left unrecorded is not counted.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from harvester.intel.build import BuildResult
from harvester.intel.schema import STATE_KEY, TYPES
from harvester.intel.source import HiveDaySource
from harvester.manifest.io import HEAD_KEY
from harvester.schemas import FEEDS, items_to_table
from harvester.sim.data import DatasetSpec
from harvester.sim.server import SimulatorThread
from harvester.storage import Blob, Expect, LocalStore, ObjectInfo, Store

from cli import cli
from harvesting import harvest
from intel_check import CountingSource, build, expected_table, export, table_rows

ALL = tuple(FEEDS)
SOME = ("ips", "domains", "artifacts", "network_streams")  # every type but three
FORMATS = ("hive", "iceberg")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def truth(
    server: SimulatorThread, feeds: Sequence[str], start: str, end: str, **query: int
) -> dict[str, list[dict[str, Any]]]:
    scores = {"confidence": 0, "severity": 0, **query}
    return {f: server.dataset.truth(f, at(start), at(end), **scores) for f in feeds}


def run(server: SimulatorThread, out: Path, fmt: str, **options: Any) -> None:
    options = {"confidence": 0, "severity": 0, "table_format": fmt, **options}
    result = harvest(server.url, str(out), **options)
    assert result.ok, result.failures


def counting(seen: list[CountingSource]) -> Callable[[Any, Any], CountingSource]:
    def make(store: Any, iceberg: Any) -> CountingSource:
        seen.append(CountingSource(store, iceberg))
        return seen[-1]

    return make


def build_counted(out: Path) -> tuple[BuildResult, set[tuple[str, date]]]:
    seen: list[CountingSource] = []
    result = build(str(out), source=counting(seen))
    assert set(seen[0].reads) == set(result.read)
    return result, set(seen[0].reads)


def test_an_iceberg_lake_gives_the_table_a_hive_lake_gives(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Both formats, the same records: the same table, the independent one; and exports."""
    span = ("2024-01-30", "2024-02-01")
    hive, iceberg = tmp_path / "hive", tmp_path / "iceberg"
    run(sim, hive, "hive", after=span[0], before=span[1])
    run(sim, iceberg, "iceberg", after=span[0], before=span[1])
    assert not list(iceberg.glob("*/dt=*"))  # really two formats
    on_iceberg = build(str(iceberg))
    on_hive = build(str(hive))
    assert on_iceberg.tables == on_hive.tables and on_iceberg.read == on_hive.read
    want = expected_table(truth(sim, ALL, *span))
    got = table_rows(str(iceberg))
    for kind in TYPES:
        assert want[kind], f"the simulator gave no {kind}: the test proves nothing"
        assert got[kind] == want[kind], kind
    assert table_rows(str(hive)) == got
    assert build(str(iceberg)).up_to_date
    # export reads the indicator table only: the same bytes from either lake
    export(str(iceberg), "stix21", str(tmp_path / "iceberg.json"))
    export(str(hive), "stix21", str(tmp_path / "hive.json"))
    assert (tmp_path / "iceberg.json").read_bytes() == (tmp_path / "hive.json").read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_updates_through_more_days_force_lookback_and_a_stricter_query_equal_a_rebuild(
    make_sim: Any, tmp_path: Path, fmt: str
) -> None:
    """Each update reads only the days that changed, and equals plain Python over the records."""
    server = make_sim()
    lake = tmp_path / "lake"
    jan31, feb2 = date(2024, 1, 31), date(2024, 2, 2)

    def check(*feeds_days: tuple[str, str, str, dict[str, int]]) -> None:
        items: dict[str, list[dict[str, Any]]] = {f: [] for f in SOME}
        for feed, start, end, query in feeds_days:
            items[feed] += truth(server, [feed], start, end, **query)[feed]
        assert table_rows(str(lake)) == expected_table(items)

    def everything(until: str, **exceptions: tuple[str, str, dict[str, int]]) -> None:
        parts = []
        for feed in SOME:
            if feed in exceptions:
                cut, cut_end, query = exceptions[feed]
                parts += [(feed, "2024-01-30", cut, {}), (feed, cut, cut_end, query)]
                parts += [(feed, cut_end, until, {})]
            else:
                parts.append((feed, "2024-01-30", until, {}))
        check(*parts)

    feeds = ",".join(SOME)
    run(server, lake, fmt, feeds=feeds, after="2024-01-30", before="2024-02-01")
    assert build(str(lake)).rebuild
    everything("2024-02-01")

    # more days: only they are read
    run(server, lake, fmt, feeds=feeds, after="2024-02-01", before="2024-02-03")
    result, reads = build_counted(lake)
    assert not result.rebuild and {d for _, d in reads} == {date(2024, 2, 1), feb2}
    everything("2024-02-03")

    # --force over a day with late records: only that feed's day is read again
    late = server.add_records("ips", jan31, 6)
    assert late
    run(server, lake, fmt, feeds=feeds, after="2024-01-31", before="2024-02-01", force=True)
    result, reads = build_counted(lake)
    assert reads == {("ips", jan31)} and not result.dropped
    everything("2024-02-03")

    # a nightly --lookback finds late records on the day before last
    server.add_records("domains", feb2, 5)
    nightly = harvest(
        server.url, str(lake), feeds=feeds, after="2024-01-30", since_last=True, before="now",
        lag="1h",
        now=at("2024-02-03T02:00:00"), lookback="2d", confidence=0, severity=0,
        table_format=fmt,
    )  # fmt: skip
    assert nightly.ok and nightly.feeds["domains"].late == 5
    result, reads = build_counted(lake)
    assert reads == {("domains", feb2)}
    everything("2024-02-03")

    # a stricter query over a day removes records, values with them
    before = table_rows(str(lake))
    run(server, lake, fmt, feeds="domains", after="2024-02-01", before="2024-02-02", confidence=60)
    result, reads = build_counted(lake)
    assert reads == {("domains", date(2024, 2, 1))}
    everything("2024-02-03", domains=("2024-02-01", "2024-02-02", {"confidence": 60}))
    incremental = table_rows(str(lake))
    assert sum(r[3] for r in incremental["domain"]) < sum(r[3] for r in before["domain"])
    assert {r[0] for r in incremental["domain"]} < {r[0] for r in before["domain"]}
    assert build(str(lake), rebuild=True).rebuild
    assert table_rows(str(lake)) == incremental


# -- cost: a build with nothing new reads the head and the state --------------------------


class CountingStore(LocalStore):
    """A local store that remembers every call, and the key (or prefix) it was for."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []

    # Groups go through read() and write() one by one, so that each call is counted.
    read_many = Store.read_many
    write_many = Store.write_many

    async def read(self, key: str) -> Blob | None:
        self.calls.append(("read", key))
        return await super().read(key)

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        self.calls.append(("write", key))
        return await super().write(key, data, expect=expect)

    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        self.calls.append(("commit", key))
        return await super().commit(staged, key, expect=expect)

    async def delete(self, key: str, *, expect: str | None = None) -> None:
        self.calls.append(("delete", key))
        await super().delete(key, expect=expect)

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> builtins.list[ObjectInfo]:
        self.calls.append(("list", prefix))
        return await super().list(prefix, start_after=start_after)

    def fetch(self, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        self.calls.append(("fetch", key))
        return super().fetch(key)

    def partitions(self) -> set[str]:
        """The manifest partitions read."""
        return {k for m, k in self.calls if m == "read" and k.startswith("_manifest/") and
                k != HEAD_KEY}  # fmt: skip

    def data(self) -> set[str]:
        """The data files read."""
        return {k for m, k in self.calls if m == "fetch" and "/dt=" in k}


def counted_build(out: Path, **options: Any) -> tuple[BuildResult, CountingStore]:
    from harvester.intel.build import BuildOptions, build_indicators

    store = CountingStore(out)
    result = asyncio.run(build_indicators(store, options=BuildOptions(**options)))
    return result, store


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_build_with_nothing_new_costs_the_same_whatever_the_history(
    make_sim: Any, tmp_path: Path, fmt: str
) -> None:
    """No-op: the state and the head, and a listing of the tables, on 1 month and on 5.

    An update after a day reads that day's month partition and that day's data only.
    """
    server = make_sim(dataset=DatasetSpec(seed=5, rows_per_day=4))
    lake = tmp_path / "lake"
    feeds = "ips,domains"
    run(server, lake, fmt, feeds=feeds, after="2024-01-01", before="2024-02-01")
    build(str(lake))
    result, small = counted_build(lake)
    assert result.up_to_date
    assert sorted(small.calls) == sorted(
        [("read", STATE_KEY), ("read", HEAD_KEY), ("list", "indicators/")]
    )

    run(server, lake, fmt, feeds=feeds, after="2024-02-01", before="2024-06-01")
    result, store = counted_build(lake)
    assert not result.rebuild and {d.month for _, d in result.read} == {2, 3, 4, 5}
    months = {f"_manifest/{f}/2024-0{m}.json" for f in ("ips", "domains") for m in (2, 3, 4, 5)}
    assert store.partitions() == months  # January's partitions are not read again
    result, large = counted_build(lake)
    assert result.up_to_date
    assert sorted(large.calls) == sorted(small.calls)

    run(server, lake, fmt, feeds=feeds, after="2024-06-01", before="2024-06-02")
    result, store = counted_build(lake)
    assert set(result.read) <= {("ips", date(2024, 6, 1)), ("domains", date(2024, 6, 1))}
    assert result.read
    assert store.partitions() == {"_manifest/ips/2024-06.json", "_manifest/domains/2024-06.json"}
    if fmt == "hive":
        assert store.data() == {
            f"{feed}/dt=2024-06-01/part-20240601T000000Z.parquet" for feed, _ in result.read
        }
    assert table_rows(str(lake)) == expected_table(
        truth(server, ("ips", "domains"), "2024-01-01", "2024-06-02")
    )


# -- only recorded data counts -------------------------------------------------------------


def _odd_items(day: str, domain: str) -> list[dict[str, Any]]:
    return [
        {"timestamp": f"{day}T12:00:00Z", "ioc": "x", "confidence": 1, "severity": 1,
         "sample_id": "s-unrecorded", "sample_sha256": "0" * 64, "domain": domain}
    ]  # fmt: skip


def test_a_file_no_run_recorded_is_not_counted(sim: SimulatorThread, tmp_path: Path) -> None:
    """Left by a killed run (written, never recorded): in a day of its own, or beside one."""
    span = ("2024-01-30", "2024-02-01")
    lake = tmp_path / "lake"
    run(sim, lake, "hive", feeds="domains", after=span[0], before=span[1])
    for day, domain, name in (
        ("2024-02-05", "unrecorded-day.example", "part-20240205T000000Z.parquet"),
        ("2024-01-30", "unrecorded-file.example", "part-20240130T120000Z.parquet"),
    ):
        folder = lake / "domains" / f"dt={day}"
        folder.mkdir(exist_ok=True)
        pq.write_table(items_to_table(FEEDS["domains"], _odd_items(day, domain)), folder / name)
    listed = tmp_path / "listed"
    shutil.copytree(lake, listed)

    build(str(lake))
    assert table_rows(str(lake)) == expected_table(truth(sim, ["domains"], *span))
    # ... which is not what a listing of the lake counts: the test can tell
    build(str(listed), source=lambda store, _: HiveDaySource(store))
    counted = {row[0] for row in table_rows(str(listed))["domain"]}
    assert {"unrecorded-day.example", "unrecorded-file.example"} <= counted


def test_rows_an_iceberg_commit_never_recorded_are_not_counted(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """A run killed between its Iceberg commit and the manifest: that day does not count."""
    from harvester.iceberg.catalog import open_catalog
    from harvester.iceberg.commit import commit_windows, summary_properties
    from harvester.iceberg.tables import load_table

    from icebergcheck import write_group

    span = ("2024-01-30", "2024-02-01")
    lake = tmp_path / "lake"
    run(sim, lake, "iceberg", feeds="domains", after=span[0], before=span[1])
    table = load_table(open_catalog(str(lake), None), "domains")
    assert table is not None
    files = write_group(table, "domains", _odd_items("2024-02-05", "unrecorded.example"))
    windows = [(at("2024-02-05"), at("2024-02-06"))]
    properties = summary_properties(run_id="killed", windows=windows, fingerprint="f")
    assert commit_windows(table, windows=windows, files=files, properties=properties)
    table.refresh()
    assert "unrecorded.example" in table.scan().to_arrow().column("domain").to_pylist()
    build(str(lake))
    assert table_rows(str(lake)) == expected_table(truth(sim, ["domains"], *span))


# -- the command line ---------------------------------------------------------------------


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("harvester: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_indicators_takes_an_iceberg_lakes_catalog_and_namespace(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """The flags of `run`; wrong ones are refused before anything is written."""
    iceberg, hive = tmp_path / "iceberg", tmp_path / "hive"
    run(sim, iceberg, "iceberg", feeds="urls", after="2024-01-30", before="2024-01-31")
    run(sim, hive, "hive", feeds="urls", after="2024-01-30", before="2024-01-31")

    wrong = cli(["indicators", "--out", str(iceberg), "--namespace", "elsewhere"], key=None)
    assert wrong.returncode == 2
    assert "has no table elsewhere.urls" in error_line(wrong.stderr)
    assert not (iceberg / "indicators").exists() and not (iceberg / STATE_KEY).exists()
    invalid = cli(["indicators", "--out", str(iceberg), "--namespace", "a-b"], key=None)
    assert invalid.returncode == 2 and "--namespace 'a-b'" in error_line(invalid.stderr)
    on_hive = cli(["indicators", "--out", str(hive), "--catalog", "glue"], key=None)
    assert on_hive.returncode == 2
    assert "are for Iceberg lakes" in error_line(on_hive.stderr)
    assert not (hive / "indicators").exists()

    # a Hive lake is built without loading pyiceberg
    code = (
        "import asyncio, sys; from harvester.intel.build import build_indicators; "
        "from harvester.storage import open_store; "
        f"asyncio.run(build_indicators(open_store({str(hive)!r}))); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyiceberg', 'sqlalchemy')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip().splitlines()[-1] == "[]" and (hive / "indicators").exists()

    catalog = f"sqlite:///{iceberg / '_catalog.db'}"
    args = ["indicators", "--out", str(iceberg), "--catalog", catalog, "--namespace", "threatgrid"]
    built = cli(args, key=None)
    assert built.returncode == 0, built.stderr
    assert table_rows(str(iceberg)) == expected_table(
        truth(sim, ["urls"], "2024-01-30", "2024-01-31")
    )


def test_a_damaged_head_is_read_around(sim: SimulatorThread, tmp_path: Path) -> None:
    """The partitions are read instead (as `status` does), in either format."""
    for fmt in FORMATS:
        lake = tmp_path / fmt
        run(sim, lake, fmt, feeds="domains", after="2024-01-30", before="2024-02-01")
        (lake / HEAD_KEY).write_text("{not json")
        build(str(lake))
        assert table_rows(str(lake)) == expected_table(
            truth(sim, ["domains"], "2024-01-30", "2024-02-01")
        )
        assert build(str(lake)).up_to_date
