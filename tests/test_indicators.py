"""The indicator table: exact against the simulator, incremental equals rebuild, removals."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from harvester.intel.schema import INDICATOR_SCHEMA, STATE_KEY, TYPES
from harvester.intel.state import decode_state
from harvester.sim.server import SimulatorThread
from harvester.storage import open_store
from harvester.verify import verify

from harvesting import harvest
from intel_check import CountingSource, build, expected_table, lake_items, table_rows

ALL = ("ips", "domains", "urls", "artifacts", "paths", "network_streams", "registry_keys")
# Days 1-3 end January, days 4-5 start February: an update must leave January alone.
FIRST = ("2024-01-30", "2024-02-02")
SECOND = ("2024-02-02", "2024-02-04")
STRICT = 50  # a --confidence that leaves out some of a day's records


def _harvest(sim: SimulatorThread, out: Path, span: tuple[str, str]) -> None:
    result = harvest(sim.url, str(out), after=span[0], before=span[1], confidence=0, severity=0)
    assert result.ok, result.failures


def _truth(sim: SimulatorThread, start: str, end: str) -> dict[str, list[dict[str, Any]]]:
    lo = datetime.fromisoformat(start).replace(tzinfo=UTC)
    hi = datetime.fromisoformat(end).replace(tzinfo=UTC)
    return {f: sim.dataset.truth(f, lo, hi, confidence=0, severity=0) for f in ALL}


@pytest.fixture(scope="module")
def first_lake(sim: SimulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Days 1-3 harvested, not built: copy it before building."""
    out = tmp_path_factory.mktemp("intel") / "lake"
    _harvest(sim, out, FIRST)
    return out


def _copy(lake: Path, tmp_path: Path) -> Path:
    target = tmp_path / "lake"
    shutil.copytree(lake, target)
    return target


def test_table_equals_plain_python_over_the_simulators_records(
    sim: SimulatorThread, first_lake: Path, tmp_path: Path
) -> None:
    """Every type's rows equal an independent computation over the simulator's items."""
    lake = _copy(first_lake, tmp_path)
    result = build(str(lake))
    assert result.rebuild and not result.up_to_date
    want = expected_table(_truth(sim, *FIRST))
    got = table_rows(str(lake))
    for kind in TYPES:
        assert want[kind], f"the simulator gave no {kind} at all: the test proves nothing"
        assert got[kind] == want[kind], kind
    assert set(result.tables) == set(TYPES)
    assert {k: len(v) for k, v in want.items()} == result.tables
    for kind in TYPES:
        path = lake / "indicators" / f"type={kind}" / "indicators.parquet"
        schema = pq.read_schema(path)
        # Parquet stores seconds as milliseconds, exactly as the lake's own timestamps
        assert schema.names == INDICATOR_SCHEMA.names
        for field in INDICATOR_SCHEMA:
            if pa.types.is_timestamp(field.type):
                assert schema.field(field.name).type.tz == "UTC"
            else:
                assert schema.field(field.name).type.equals(field.type), field.name
        values = pq.read_table(path).column("value")
        assert values.to_pylist() == sorted(values.to_pylist())  # small: one pass, sorted
        assert len(set(values.to_pylist())) == len(values)
        assert pc.min(pc.utf8_length(values)).as_py() > 0  # no empty values


def test_a_second_build_with_nothing_new_writes_nothing(first_lake: Path, tmp_path: Path) -> None:
    lake = _copy(first_lake, tmp_path)
    build(str(lake))
    before = {p: p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()}
    again = build(str(lake))
    assert again.up_to_date
    assert {p: p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()} == before


def test_incremental_build_reads_only_new_days_and_equals_a_full_rebuild(
    sim: SimulatorThread, first_lake: Path, tmp_path: Path
) -> None:
    """Days 1-3, build, days 4-5, build: only days 4-5 are read, January's partials stay."""
    lake = _copy(first_lake, tmp_path)
    build(str(lake))
    january = {
        p: p.read_bytes() for p in (lake / "_indicators").rglob("month=2024-01.parquet")
    }
    assert january
    _harvest(sim, lake, SECOND)
    new_days = {
        (feed, date.fromisoformat(p.parent.name.removeprefix("dt=")))
        for feed in ALL
        for p in (lake / feed).glob("dt=2024-02-0[23]/*.parquet")
    }
    seen: list[CountingSource] = []

    def source(store: Any, iceberg: Any) -> CountingSource:
        seen.append(CountingSource(store, iceberg))
        return seen[0]

    result = build(str(lake), source=source)
    assert not result.rebuild
    assert set(seen[0].reads) == new_days == set(result.read)
    assert {p: p.read_bytes() for p in january} == january
    incremental = table_rows(str(lake))

    assert incremental == expected_table(_truth(sim, FIRST[0], SECOND[1]))
    rebuilt = build(str(lake), rebuild=True)
    assert rebuilt.rebuild
    assert table_rows(str(lake)) == incremental
    # and a lake harvested in one go, built once, gives the same table
    fresh = tmp_path / "fresh"
    _harvest(sim, fresh, (FIRST[0], SECOND[1]))
    build(str(fresh))
    assert table_rows(str(fresh)) == incremental


def _repair(lake: Path) -> None:
    async def go() -> None:
        store = open_store(str(lake))
        try:
            report = await verify(store, repair=True)
            assert not report.ok  # it found something, and repaired it
        finally:
            await store.close()

    asyncio.run(go())


def test_reharvest_that_removes_a_values_only_sighting_removes_the_value(
    sim: SimulatorThread, first_lake: Path, tmp_path: Path
) -> None:
    """A day harvested again with a stricter query loses a value's only record: it goes.

    And a day whose file was lost, repaired by ``verify --repair``, leaves the table.
    """
    lake = _copy(first_lake, tmp_path)
    build(str(lake))
    before = table_rows(str(lake))
    once = {row[0] for row in before["domain"] if row[3] == 1}
    weak = [
        item
        for item in lake_items(str(lake), ["domains"])["domains"]
        if item["domain"] in once and (item.get("confidence") or 0) < STRICT
    ]
    assert weak, "no domain seen once with a low confidence: pick another dataset"
    victim = weak[0]
    day = datetime.fromtimestamp(victim["timestamp"], UTC).date()
    result = harvest(
        sim.url, str(lake), feeds="domains", after=day.isoformat(),
        before=(day + timedelta(days=1)).isoformat(), confidence=STRICT, severity=0,
    )  # fmt: skip
    assert result.ok and result.feeds["domains"].done == 1
    # and a whole day of paths is lost, then repaired away (its window is incomplete)
    gone = sorted((lake / "paths").glob("dt=2024-01-31/*.parquet"))
    assert gone
    for path in gone:
        path.unlink()
    _repair(lake)

    result = build(str(lake))
    assert not result.rebuild
    assert ("paths", date(2024, 1, 31)) in result.dropped
    assert ("domains", day) in result.read
    after = table_rows(str(lake))
    assert victim["domain"] not in {row[0] for row in after["domain"]}
    assert after == expected_table(lake_items(str(lake), ALL))
    assert after != before
    build(str(lake), rebuild=True)
    assert table_rows(str(lake)) == after


def test_a_build_that_dies_half_way_is_finished_exactly_by_the_next(
    sim: SimulatorThread, first_lake: Path, tmp_path: Path
) -> None:
    """Killed after some partials changed: the next build redoes the pending days exactly.

    The state marks the days being redone pending first, so the result equals a full
    rebuild whatever the moment of death.
    """
    lake = _copy(first_lake, tmp_path)
    build(str(lake))
    # January 31st harvested again with a stricter query (new files), then days 4-5
    again = harvest(
        sim.url, str(lake), after="2024-01-31", before="2024-02-01", confidence=STRICT, severity=0
    )
    assert again.ok
    _harvest(sim, lake, SECOND)
    january = {p: p.stat().st_mtime_ns for p in (lake / "_indicators").rglob("month=2024-01*")}

    def dying(store: Any, iceberg: Any) -> CountingSource:
        return CountingSource(store, iceberg, fail_after=len(ALL) + 3)  # in February's days

    with pytest.raises(RuntimeError, match="simulated crash"):
        build(str(lake), source=dying, read_ahead=1)
    assert {p: p.stat().st_mtime_ns for p in january} != january  # January was rewritten
    state = decode_state((lake / STATE_KEY).read_bytes())
    assert state is not None
    pending = {(f, d) for f, days in state.pending.items() for d in days}
    assert {d for _, d in pending} == {date(2024, 1, 31), date(2024, 2, 2), date(2024, 2, 3)}
    assert {f for f, _ in pending} == set(ALL)
    finished = build(str(lake))
    assert set(finished.read) == pending
    assert table_rows(str(lake)) == expected_table(lake_items(str(lake), ALL))
    assert not list(lake.rglob(".*.tmp"))
    done = decode_state((lake / STATE_KEY).read_bytes())
    assert done is not None and not done.pending


def test_a_table_computed_in_hash_buckets_equals_one_pass(
    first_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big types are aggregated a hash bucket of values at a time: the same rows."""
    from harvester.intel import build as build_module

    lake = _copy(first_lake, tmp_path)
    build(str(lake))
    whole = table_rows(str(lake))
    monkeypatch.setattr(build_module, "_rows_per_bucket", lambda limit: 40)
    build(str(lake), rebuild=True)
    assert table_rows(str(lake)) == whole
    values = pq.read_table(lake / "indicators" / "type=ip" / "indicators.parquet").column("value")
    assert values.to_pylist() != sorted(values.to_pylist())  # it did run in several passes
