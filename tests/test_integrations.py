"""harvester.integrations and deploy/: orchestrator glue, tested without Airflow or Dagster.

The interval and partition mappings are pure and tested with hypothesis; the harvest
functions run real harvests against the simulator; the Airflow DAG and the Dagster
definitions are compiled and read with ``ast``, since neither library is installed.
"""

from __future__ import annotations

import ast
import itertools
import json
import py_compile
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester import integrations
from harvester.config import DEFAULTS
from harvester.errors import (
    ApiUnreachable,
    AuthError,
    ConfigError,
    IncompleteHarvest,
    ServerError,
    StorageAccessError,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from harvester.integrations import (
    HarvestSpan,
    choose_api_key,
    day_span,
    harvest_day,
    harvest_interval,
    resolve_window,
    retryable,
    run_metadata,
    snap_interval,
)
from harvester.sim.server import Faults, SimulatorThread
from harvester.windows import Window, floor_to, parse_duration, plan_windows

from harvesting import SIM_KEY, harvest
from lakecheck import assert_lake_exact

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
AIRFLOW_DAG = DEPLOY / "airflow_dag.py"
DAGSTER_ASSETS = DEPLOY / "dagster_assets.py"
ORCHESTRATORS = ("airflow", "dagster", "pendulum")

WINDOWS = ["15m", "1h", "6h", "1d", "2d", "7d"]
ZONES = [
    UTC,
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-7)),
    ZoneInfo("Europe/London"),
    ZoneInfo("America/New_York"),
]
any_instant = st.datetimes(
    min_value=datetime(2001, 1, 1),
    max_value=datetime(2039, 1, 1),
    timezones=st.sampled_from(ZONES),
    allow_imaginary=False,
)


def _on_grid(instant: datetime, step: timedelta) -> datetime:
    """``instant`` moved down onto the ``step`` grid, kept in its own zone."""
    return floor_to(instant.astimezone(UTC), step).astimezone(instant.tzinfo)


# Half the instants sit exactly on a grid edge, where an off-by-one would show.
instants = st.one_of(
    any_instant,
    st.builds(_on_grid, any_instant, st.sampled_from([parse_duration(w) for w in WINDOWS])),
)
lengths = st.one_of(
    st.timedeltas(timedelta(seconds=1), timedelta(days=9)),
    st.builds(
        lambda n, unit: n * unit,
        st.integers(1, 40),
        st.sampled_from([timedelta(minutes=15), timedelta(hours=1), timedelta(days=1)]),
    ),
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def grid_windows(span: HarvestSpan, window: timedelta) -> list[Window]:
    """The windows a span harvests (plan_windows also checks both ends are on the grid)."""
    return [] if span.empty else plan_windows(span.after, span.before, window)


# --- the interval rule ------------------------------------------------------------------


@given(
    base=instants,
    steps=st.lists(
        st.tuples(lengths, st.sampled_from(ZONES)),
        min_size=1,
        max_size=5,
    ),
    window=st.sampled_from(WINDOWS),
)
def test_adjacent_intervals_tile_the_grid_without_overlap_or_gap(
    base: datetime, steps: list[tuple[timedelta, Any]], window: str
) -> None:
    """Consecutive intervals harvest consecutive spans that add up to the whole range's.

    The bounds are any instants, in any zone, on or off the grid.
    """
    step = parse_duration(window)
    edges = [base]
    for delta, zone in steps:
        edges.append((edges[-1] + delta).astimezone(zone))
    spans = [snap_interval(a, b, step) for a, b in itertools.pairwise(edges)]
    for left, right in itertools.pairwise(spans):
        assert left.before == right.after  # no gap, no overlap
    harvested = [w for span in spans for w in grid_windows(span, step)]
    whole = snap_interval(edges[0], edges[-1], step)
    assert harvested == grid_windows(whole, step)  # each window once, in order
    assert len(set(harvested)) == len(harvested)


@given(
    start=instants,
    length=lengths,
    window=st.sampled_from(WINDOWS),
)
def test_an_interval_harvests_exactly_the_windows_that_end_within_it(
    start: datetime, length: timedelta, window: str
) -> None:
    """The documented rule: window W is harvested iff start < W.end <= end."""
    step = parse_duration(window)
    # ``length`` later in real time: aware arithmetic is wall-clock time, and across a
    # DST fall-back (01:00 fold=1 + 1 s = 01:00:01 fold=0) that goes back an hour.
    end = (start.astimezone(UTC) + length).astimezone(start.tzinfo)
    span = snap_interval(start, end, step)
    harvested = grid_windows(span, step)
    assert all(start < w.end <= end for w in harvested)
    # the windows just outside the span end outside the interval
    before_first = Window(start=span.after - step, end=span.after)
    after_last = Window(start=span.before, end=span.before + step)
    assert not start < before_first.end <= end
    assert not start < after_last.end <= end
    assert span.after <= start.astimezone(UTC) and span.before <= end.astimezone(UTC)


def test_interval_examples_off_the_grid_and_in_other_zones() -> None:
    """Examples of the floors, including a short interval and a DST day that hold no edge."""
    day = parse_duration("1d")
    span = snap_interval(at("2024-01-01T03:00:00+00:00"), at("2024-01-03T03:00:00+00:00"), day)
    assert span.to_json() == {"after": "2024-01-01T00:00:00Z", "before": "2024-01-03T00:00:00Z"}
    # midnight in Paris is 23:00 UTC the day before: the day that ended by then
    paris = ZoneInfo("Europe/Paris")
    span = snap_interval(
        datetime(2024, 1, 2, tzinfo=paris), datetime(2024, 1, 3, tzinfo=paris), day
    )
    assert span.to_json() == {"after": "2024-01-01T00:00:00Z", "before": "2024-01-02T00:00:00Z"}
    # London's 23-hour day (clocks go forward) holds no UTC midnight: an empty harvest
    london = ZoneInfo("Europe/London")
    short = snap_interval(
        datetime(2024, 3, 31, tzinfo=london), datetime(2024, 4, 1, tzinfo=london), day
    )
    assert short.empty and short.after == datetime(2024, 3, 31, tzinfo=UTC)
    nxt = snap_interval(
        datetime(2024, 4, 1, tzinfo=london), datetime(2024, 4, 2, tzinfo=london), day
    )
    assert nxt.to_json() == {"after": "2024-03-31T00:00:00Z", "before": "2024-04-01T00:00:00Z"}
    # an hour inside a 6h window: nothing has ended yet
    six = parse_duration("6h")
    assert snap_interval(at("2024-01-01T07:00:00Z"), at("2024-01-01T08:00:00Z"), six).empty


class OwnArithmetic(datetime):
    """A datetime subclass whose differences are not timedeltas, like pendulum's DateTime.

    Airflow hands tasks pendulum DateTimes; ``a - b`` between two of them is a pendulum
    Interval, whose ``%`` with a timedelta fails.
    """

    def __sub__(self, other: Any) -> Any:
        result = super().__sub__(other)
        return object() if isinstance(other, datetime) else result


def test_datetime_subclasses_with_their_own_arithmetic_are_mapped_as_plain_ones() -> None:
    start = OwnArithmetic(2024, 1, 2, 2, 15, tzinfo=UTC)
    end = OwnArithmetic(2024, 1, 3, 2, 15, tzinfo=UTC)
    with pytest.raises(TypeError):
        _ = (end - start) % timedelta(days=1)  # what broke the first Airflow run
    span = snap_interval(start, end, parse_duration("1d"))
    assert span.to_json() == {"after": "2024-01-02T00:00:00Z", "before": "2024-01-03T00:00:00Z"}
    assert type(span.after) is datetime and type(span.before) is datetime


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (at("2024-01-02T00:00:00Z"), at("2024-01-01T00:00:00Z"), "empty or reversed"),
        (at("2024-01-01T00:00:00Z"), at("2024-01-01T00:00:00Z"), "empty or reversed"),
        (datetime(2024, 1, 1), at("2024-01-02T00:00:00Z"), "has no time zone"),
        (None, at("2024-01-02T00:00:00Z"), "data_interval_start is missing"),
        (at("2024-01-01T00:00:00Z"), None, "data_interval_end is missing"),
    ],
)
def test_bad_intervals_are_config_errors(
    start: datetime | None, end: datetime | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        snap_interval(start, end, parse_duration("1d"))


# --- daily partitions --------------------------------------------------------------------


@given(
    day=st.dates(min_value=date(1971, 1, 1), max_value=date(2099, 12, 30)),
    window=st.sampled_from(["15m", "1h", "6h", "1d"]),
)
def test_a_day_partition_is_its_utc_day_and_days_tile(day: date, window: str) -> None:
    """Partition YYYY-MM-DD is [day, day+1) UTC, on every grid dividing a day; days tile."""
    span = day_span(day.isoformat())
    step = parse_duration(window)
    assert span.after == datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert span.before - span.after == timedelta(days=1)
    assert day_span((day + timedelta(days=1)).isoformat()).after == span.before
    windows = grid_windows(span, step)
    assert len(windows) == timedelta(days=1) // step
    assert snap_interval(span.after, span.before, step) == span


@pytest.mark.parametrize("key", ["2024-2-1", "2024-02-30", "20240101", "2024-01-01T00", "", "x"])
def test_bad_partition_keys_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError, match="is not a day; use YYYY-MM-DD"):
        day_span(key)


def test_the_window_comes_from_keywords_then_the_file_then_the_default(tmp_path: Path) -> None:
    toml = tmp_path / "job.toml"
    toml.write_text('window = "6h"\n')
    assert resolve_window() == parse_duration(DEFAULTS["window"])
    assert resolve_window(toml) == timedelta(hours=6)
    assert resolve_window(toml, window="15m") == timedelta(minutes=15)
    toml.write_text('window = "7m"\n')
    with pytest.raises(ConfigError, match="does not divide a day"):
        resolve_window(toml)


# --- harvests against the simulator ------------------------------------------------------


def sim_options(sim: SimulatorThread, out: Path, **more: Any) -> dict[str, Any]:
    return {"base_url": sim.url, "out": str(out), "rate": 1000, "concurrency": 8, **more}


def truth(sim: SimulatorThread, feeds: list[str], start: str, end: str) -> dict[str, Any]:
    return {f: sim.dataset.truth(f, at(start), at(end)) for f in feeds}


def test_adjacent_intervals_harvest_the_lake_once(sim: SimulatorThread, tmp_path: Path) -> None:
    """Two adjacent off-grid intervals: each harvests its own days, the lake is exact."""
    feeds = ["ips", "urls"]
    options = sim_options(sim, tmp_path, feeds=",".join(feeds))
    first = harvest_interval(
        at("2024-01-01T03:00:00Z"), at("2024-01-03T03:00:00Z"), api_key=SIM_KEY, **options
    )
    second = harvest_interval(
        at("2024-01-03T03:00:00Z"),
        at("2024-01-04T03:00:00Z"),
        env={"THREATGRID_API_KEY": SIM_KEY},  # the key from the environment
        **options,
    )
    assert (first["after"], first["before"]) == ("2024-01-01T00:00:00Z", "2024-01-03T00:00:00Z")
    assert (second["after"], second["before"]) == ("2024-01-03T00:00:00Z", "2024-01-04T00:00:00Z")
    assert first["harvested"] and second["harvested"]
    for outcome, days in ((first, 2), (second, 1)):
        for feed in feeds:
            numbers = outcome["metadata"]["feeds"][feed]
            assert (numbers["windows_done"], numbers["windows_skipped"]) == (days, 0)
    rows = assert_lake_exact(
        str(tmp_path), truth(sim, feeds, "2024-01-01T00:00:00+00:00", "2024-01-04T00:00:00+00:00")
    )
    total = first["metadata"]["rows"] + second["metadata"]["rows"]
    assert total == sum(rows.values()) > 0
    # what an XCom or a metadata store keeps: JSON, unchanged by a round trip
    assert json.loads(json.dumps(first)) == first
    assert (
        first["result"]["ok"] is True and first["metadata"]["run_id"] == first["result"]["run_id"]
    )


def test_a_rerun_of_an_interval_harvests_nothing_again(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """Retrying a finished task asks the API for nothing and skips every window."""
    options = sim_options(sim, tmp_path, feeds="domains")
    start, end = at("2024-01-01T00:00:00Z"), at("2024-01-02T00:00:00Z")
    harvest_interval(start, end, api_key=SIM_KEY, **options)
    again = harvest_interval(start, end, api_key=SIM_KEY, **options)
    assert again["metadata"]["requests"] == 0
    assert again["metadata"]["windows_skipped"] == 1 and again["metadata"]["windows_done"] == 0


def test_metadata_sums_the_feeds_of_a_real_run(sim: SimulatorThread, tmp_path: Path) -> None:
    """run_metadata on a RunResult: totals are the per-feed sums, numbers are the result's."""
    result = harvest(sim.url, str(tmp_path), feeds="ips,domains,paths", window="6h")
    metadata = run_metadata(result)
    assert json.loads(json.dumps(metadata)) == metadata
    assert set(metadata["feeds"]) == {"ips", "domains", "paths"}
    for feed, summary in result.feeds.items():
        numbers = metadata["feeds"][feed]
        assert numbers["rows"] == summary.rows > 0
        assert numbers["pages"] == summary.pages
        assert numbers["requests"] == summary.counters.requests
        assert numbers["throttled_429"] == summary.counters.throttled
        assert numbers["windows_done"] == summary.done == 12  # 3 days of 6h windows
    for name in (
        "rows",
        "pages",
        "requests",
        "retries",
        "throttled_429",
        "bytes",
        "windows",
        "windows_done",
        "windows_skipped",
        "windows_failed",
    ):
        assert metadata[name] == sum(f[name] for f in metadata["feeds"].values()), name
    assert metadata["ok"] is True and metadata["windows_failed"] == 0


def test_metadata_counts_429s(make_sim: Any, tmp_path: Path) -> None:
    """A rate-limited simulator: the 429s it answered are the metadata's throttled_429."""
    limited = make_sim(faults=Faults(rate_limit=2.0))
    result = harvest(
        limited.url,
        str(tmp_path),
        feeds="ips",
        before="2024-01-02",
        limit=10,
        fast=False,
        attempts=8,
    )
    metadata = run_metadata(result)
    assert result.ok
    assert metadata["throttled_429"] == limited.stats.rate_limited > 0


def test_a_day_partition_harvests_every_window_of_its_day(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """harvest_day with --window 6h from a TOML file: four windows per feed, that day only."""
    toml = tmp_path / "job.toml"
    lake = tmp_path / "lake"
    toml.write_text(
        f'base_url = "{sim.url}"\nout = "{lake}"\nfeeds = "urls"\nwindow = "6h"\n'
        'rate = 1000\nafter = "2020-01-01"\nbefore = "2020-02-01"\nsince_last = true\n'
    )
    outcome = harvest_day("2024-01-02", toml, api_key=SIM_KEY)
    assert (outcome["after"], outcome["before"]) == ("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")
    assert outcome["metadata"]["windows_done"] == 4
    assert outcome["result"]["feeds"]["urls"]["windows"] == 4
    assert_lake_exact(
        str(lake), truth(sim, ["urls"], "2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00")
    )


def test_a_window_longer_than_a_day_cannot_be_a_day_partition(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="longer than a day"):
        harvest_day("2024-01-02", api_key=SIM_KEY, out=str(tmp_path / "lake"), window="2d")
    assert not (tmp_path / "lake").exists()


def test_an_empty_interval_asks_nothing_and_writes_nothing(make_sim: Any, tmp_path: Path) -> None:
    """An interval holding no window end is a successful empty harvest: no request, no file."""
    quiet = make_sim()
    outcome = harvest_interval(
        at("2024-01-01T01:00:00Z"),
        at("2024-01-01T05:00:00Z"),
        env={},
        **sim_options(quiet, tmp_path / "lake"),
    )
    assert outcome == {
        "after": "2024-01-01T00:00:00Z",
        "before": "2024-01-01T00:00:00Z",
        "harvested": False,
        "metadata": None,
        "result": None,
    }
    assert quiet.stats.requests == 0
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize(
    "option", [{"after": "2024-01-01"}, {"before": "2024-01-02"}, {"since_last": True}]
)
def test_the_interval_decides_the_range(option: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the data interval decides the range"):
        harvest_interval(
            at("2024-01-01T00:00:00Z"),
            at("2024-01-02T00:00:00Z"),
            api_key=SIM_KEY,
            out=str(tmp_path),
            **option,
        )


def test_failed_windows_raise_and_a_retry_finishes_them(make_sim: Any, tmp_path: Path) -> None:
    """A feed that always fails: IncompleteHarvest (retryable); a healthy retry completes it."""
    broken = make_sim(faults=Faults(fail_always=("urls",)))
    start, end = at("2024-01-01T00:00:00Z"), at("2024-01-03T00:00:00Z")
    with pytest.raises(IncompleteHarvest) as caught:
        harvest_interval(
            start,
            end,
            api_key=SIM_KEY,
            **sim_options(broken, tmp_path, feeds="urls,ips", attempts=1),
        )
    error = caught.value
    assert retryable(error)
    message = str(error)
    assert "2 window(s) failed" in message and "retry the task" in message
    assert "urls [2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z) ServerError" in message
    assert SIM_KEY not in message and SIM_KEY not in json.dumps(error.outcome)
    outcome = error.outcome
    assert outcome["result"]["ok"] is False
    assert {f["feed"] for f in outcome["result"]["failures"]} == {"urls"}
    assert outcome["metadata"]["feeds"]["urls"]["windows_failed"] == 2
    assert outcome["metadata"]["feeds"]["ips"]["windows_done"] == 2
    assert outcome["metadata"]["windows_failed"] == 2

    healthy = make_sim()  # the same dataset, now answering: the task's retry
    retried = harvest_interval(
        start, end, api_key=SIM_KEY, **sim_options(healthy, tmp_path, feeds="urls,ips")
    )
    assert retried["metadata"]["feeds"]["urls"]["windows_done"] == 2
    assert retried["metadata"]["feeds"]["ips"]["windows_skipped"] == 2
    assert_lake_exact(
        str(tmp_path),
        truth(healthy, ["urls", "ips"], "2024-01-01T00:00:00+00:00", "2024-01-03T00:00:00+00:00"),
    )


def test_many_failures_are_counted_not_listed(make_sim: Any, tmp_path: Path) -> None:
    broken = make_sim(faults=Faults(fail_always=("urls",)))
    with pytest.raises(IncompleteHarvest, match=r"5 window\(s\) failed .*; and 2 more\)"):
        harvest_interval(
            at("2024-01-01T00:00:00Z"),
            at("2024-01-06T00:00:00Z"),
            api_key=SIM_KEY,
            **sim_options(broken, tmp_path, feeds="urls", attempts=1),
        )


def test_a_missing_key_is_a_config_error_before_any_request(make_sim: Any, tmp_path: Path) -> None:
    quiet = make_sim()
    with pytest.raises(ConfigError, match="THREATGRID_API_KEY is not set"):
        harvest_interval(
            at("2024-01-01T00:00:00Z"),
            at("2024-01-02T00:00:00Z"),
            env={},
            **sim_options(quiet, tmp_path / "lake"),
        )
    assert quiet.stats.requests == 0


def test_a_refused_key_raises_auth_error_which_is_final(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    with pytest.raises(AuthError) as caught:
        harvest_interval(
            at("2024-01-01T00:00:00Z"),
            at("2024-01-02T00:00:00Z"),
            api_key="not-the-key-0000",
            **sim_options(sim, tmp_path),
        )
    assert not retryable(caught.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (IncompleteHarvest("x", outcome={}), True),
        (ApiUnreachable("x"), True),
        (ServerError("x"), True),
        (TransientStorageError("x"), True),
        (ConfigError("x"), False),
        (AuthError("x"), False),
        (StorageError("x"), False),
        (StorageAccessError("x"), False),
        (StorageFull("x"), False),
    ],
)
def test_retryable_matches_the_final_exit_codes(error: Exception, expected: bool) -> None:
    """Exit codes 2, 3 and 4 are final (as in the k8s and Batch manifests), except transient S3."""
    assert retryable(error) is expected  # type: ignore[arg-type]
    if not isinstance(error, TransientStorageError):
        assert (error.exit_code in (2, 3, 4)) is not expected  # type: ignore[attr-defined]


def test_choose_api_key_prefers_the_environment_then_the_connection() -> None:
    asked: list[str] = []

    def connection() -> str | None:
        asked.append("yes")
        return " conn-key-1234 "

    key = choose_api_key(connection, env={"THREATGRID_API_KEY": "env-key-5678"})
    assert key.reveal() == "env-key-5678" and not asked
    assert str(key) == "***" and "env-key" not in repr(key)
    assert choose_api_key(connection, env={}).reveal() == "conn-key-1234" and asked
    with pytest.raises(ConfigError, match="THREATGRID_API_KEY is not set and the Airflow"):
        choose_api_key(
            lambda: None,
            env={"THREATGRID_API_KEY": " "},
            source="the Airflow Connection 'threatgrid_default'",
        )


# --- the deploy files --------------------------------------------------------------------


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an import statement of ``tree`` names."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def harvester_imports(tree: ast.AST) -> dict[str, set[str]]:
    """``from harvester... import names`` of ``tree``, by module."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "harvester":
            found.setdefault(node.module or "", set()).update(a.name for a in node.names)
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "harvester" for a in node.names), (
                "import harvester.integrations' functions by name, not the package"
            )
    return found


def calls_to(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


@pytest.mark.parametrize("path", [AIRFLOW_DAG, DAGSTER_ASSETS], ids=lambda p: p.name)
def test_deploy_file_compiles_and_uses_only_the_integration_functions(
    path: Path, tmp_path: Path
) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)
    tree = ast.parse(path.read_text(), filename=str(path))
    imports = harvester_imports(tree)
    assert set(imports) <= {"harvester.integrations", "harvester.errors"}, imports
    for module, names in imports.items():
        target = integrations if module == "harvester.integrations" else sys.modules[module]
        for name in names:
            assert hasattr(target, name), f"{path.name} imports {module}.{name}: no such name"
    assert imports.get("harvester.integrations"), "it must call the integration functions"


def test_the_airflow_task_harvests_its_data_interval() -> None:
    """The task hands Airflow's data interval and a key to harvest_interval.

    The DAG runs on an explicit data-interval timetable: in Airflow 3 a bare cron string
    makes runs whose interval is a single instant.
    """
    tree = ast.parse(AIRFLOW_DAG.read_text())
    (call,) = calls_to(tree, "harvest_interval")
    assert [ast.unparse(a) for a in call.args[:2]] == ["data_interval_start", "data_interval_end"]
    assert "api_key" in {k.arg for k in call.keywords}
    assert calls_to(tree, "choose_api_key") and calls_to(tree, "retryable")
    assert calls_to(tree, "CronDataIntervalTimetable")
    text = AIRFLOW_DAG.read_text()
    assert '"retries"' in text and "max_active_runs=1" in text


def test_the_dagster_asset_harvests_its_partition_day() -> None:
    tree = ast.parse(DAGSTER_ASSETS.read_text())
    (call,) = [
        c
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and ast.unparse(c.func).endswith("harvest_day")
    ]
    assert ast.unparse(call.args[0]) == "context.partition_key"
    assert calls_to(tree, "retryable")
    text = DAGSTER_ASSETS.read_text()
    assert "DailyPartitionsDefinition(" in text and 'timezone="UTC"' in text
    assert "Definitions(" in text and "retry_policy=" in text


def test_only_the_deploy_files_import_an_orchestrator() -> None:
    """harvester/ and tests/ never import Airflow or Dagster; the deploy files do, themselves."""
    for path in [*(ROOT / "harvester").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        roots = {m.split(".")[0] for m in imported_modules(ast.parse(path.read_text()))}
        assert not roots & set(ORCHESTRATORS), f"{path} imports {roots & set(ORCHESTRATORS)}"
    airflow = {m.split(".")[0] for m in imported_modules(ast.parse(AIRFLOW_DAG.read_text()))}
    dagster = {m.split(".")[0] for m in imported_modules(ast.parse(DAGSTER_ASSETS.read_text()))}
    assert "airflow" in airflow and "dagster" not in airflow
    assert "dagster" in dagster and "airflow" not in dagster


def test_importing_the_integrations_loads_no_orchestrator() -> None:
    code = (
        "import sys, harvester.integrations\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {ORCHESTRATORS!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_deploy_readme_names_what_the_files_define() -> None:
    """The names deploy/README.md tells operators to set exist in the files it describes."""
    readme = (DEPLOY / "README.md").read_text()
    dag, assets = AIRFLOW_DAG.read_text(), DAGSTER_ASSETS.read_text()
    for name in (
        "threatgrid_harvest",
        "threatgrid_default",
        "THREATGRID_HARVEST_CONFIG",
        "/opt/airflow/config/threatgrid.toml",
        "CronDataIntervalTimetable",
        "START",
    ):
        assert name in readme and name in dag, name
    for name in (
        "threatgrid_iocs",
        "threatgrid_api",
        "THREATGRID_HARVEST_CONFIG",
        "THREATGRID_API_KEY",
        "START_DATE",
        "RetryPolicy",
    ):
        assert name in readme and name in assets, name
