"""Migrating a version 1 lake, written by the real version 1 harvester.

Version 1 (commit ``1eca1e7``) kept one manifest object per complete (feed, window) and
one data file per (feed, window, day). It is taken from this repository's history with
``git archive`` and run as it was released (``python -m harvester`` with ``PYTHONPATH``
on the extracted copy, against today's installed dependencies and the simulator), so
the lakes below are exactly what a user's old harvester left. This version then reads
them (``status``), migrates them on its first ``run``, folds their days into one file
per (feed, day) when it writes them again, and survives ``kill -9`` throughout.

Readers are DuckDB over the lake's files (:mod:`lakecheck`). The one gap a reader can
see is documented (README, "Migrating a version 1 lake"): while a day of version 1
files is folded into one file, its old files are deleted before the new one is written,
so a reader may briefly miss that day's rows -- never see them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvester.manifest import legacy
from harvester.manifest.io import Manifest
from harvester.manifest.model import Partition
from harvester.sim.data import DatasetSpec
from harvester.sim.server import Faults, ServerOptions, SimulatorThread
from harvester.storage import open_store
from harvester.windows import parse_api

from cli import SIM_KEY, cli
from harvesting import forget, harvest
from intel_check import build, expected_table, table_rows
from lakecheck import _canonical, assert_lake_exact, duckdb_for_s3, lake_rows, rebuild
from s3_server import FaultProxy, admin_client

V1_COMMIT = "1eca1e7"
ROOT = Path(__file__).resolve().parents[1]
STEP = 3600
DAY = 86_400
FEEDS = ["ips", "domains", "urls"]
FAILING = "urls"
DATASET = DatasetSpec(seed=11, rows_per_day=120)
V1_ENTRY = re.compile(r"^_manifest/([a-z_]+)/(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)\.json$")
V1_FILE = re.compile(r"/part-\d{8}T\d{6}Z_\d{8}T\d{6}Z\.parquet$")


def epoch(text: str) -> int:
    """Epoch seconds of an ISO date or instant (UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def instant(text: str) -> datetime:
    return datetime.fromtimestamp(epoch(text), UTC)


def compact(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())


# --- version 1, from git ------------------------------------------------------------


@dataclass(frozen=True)
class Version1:
    """The version 1 harvester, extracted from git into ``path``."""

    path: Path

    def run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """``python -m harvester ARGS`` of version 1 (its own package first on the path)."""
        environ = {**os.environ, "THREATGRID_API_KEY": SIM_KEY}
        environ["PYTHONPATH"] = str(self.path)
        # cwd is the extracted copy: the repository's own package must not be found first.
        return subprocess.run(
            [sys.executable, "-m", "harvester", *args],
            cwd=self.path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


@pytest.fixture(scope="session")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Version1:
    """Version 1 of the harvester, from this repository's history."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: version 1 is taken from the repository's history")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{V1_COMMIT}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(
            f"commit {V1_COMMIT} (version 1) is not in this checkout's history "
            "(a shallow clone or an sdist): `git fetch --unshallow` to run these tests"
        )
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", V1_COMMIT, "harvester"],
        capture_output=True,
        check=True,
    )
    dest = tmp_path_factory.mktemp("harvester-v1")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    code = Version1(dest)
    probe = subprocess.run(
        [sys.executable, "-c", "import harvester; print(harvester.__file__)"],
        cwd=dest,
        env={**os.environ, "PYTHONPATH": str(dest)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(dest), probe.stdout
    return code


def run_args(
    out: str | Path,
    url: str,
    after: str,
    before: str,
    *extra: str,
    feeds: Sequence[str] = FEEDS,
) -> list[str]:
    """``run`` arguments both versions accept."""
    return [
        "run",
        *("--after", after, "--before", before, "--window", "1h"),
        *("--confidence", "0", "--severity", "0", "--feeds", ",".join(feeds)),
        *("--out", str(out), "--base-url", url, "--rate", "2000", "--no-progress"),
        *extra,
    ]


def v2(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the repository's (version 2) ``python -m harvester ARGS``."""
    return cli(args, timeout=300)


def start_v2(args: list[str]) -> subprocess.Popen[str]:
    """Start this version's ``python -m harvester ARGS``, output discarded."""
    env = {**os.environ, "THREATGRID_API_KEY": SIM_KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", *args],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- the lake, local or on S3 --------------------------------------------------------


class Lake:
    """Raw access to a lake's objects, local or on S3 (for checks, not through harvester)."""

    def __init__(self, url: str, endpoint: str | None = None) -> None:
        self.url = url
        self.endpoint = endpoint
        if url.startswith("s3://"):
            bucket, _, prefix = url[5:].partition("/")
            self.bucket, self.prefix = bucket, prefix.strip("/") + "/"

    @property
    def on_s3(self) -> bool:
        return self.url.startswith("s3://")

    def options(self) -> list[str]:
        return ["--s3-endpoint-url", self.endpoint] if self.endpoint else []

    def digests(self) -> dict[str, str]:
        """Every object's SHA-256, by key (local lakes)."""
        root = Path(self.url)
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    def listing(self) -> list[str]:
        """Every key, relative to the lake, sorted."""
        if not self.on_s3:
            root = Path(self.url)
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        with admin_client(self.endpoint or "") as client:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            return sorted(
                i["Key"][len(self.prefix) :] for p in pages for i in p.get("Contents", [])
            )

    def read_json(self, key: str) -> Any:
        if not self.on_s3:
            path = Path(self.url) / key
            return json.loads(path.read_bytes()) if path.exists() else None
        with admin_client(self.endpoint or "") as client:
            try:
                body = client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
            except client.exceptions.NoSuchKey:
                return None
            return json.loads(body.read())

    # --- what version 1 recorded ---------------------------------------------------

    def v1_complete(self) -> dict[str, set[int]]:
        """The windows version 1's manifest objects record complete, by feed (from names)."""
        done: dict[str, set[int]] = {}
        for key in self.listing():
            match = V1_ENTRY.match(key)
            if match:
                done.setdefault(match[1], set()).add(compact(match[2]))
        return done

    def v1_failed(self) -> dict[str, set[int]]:
        """The windows version 1's run reports list as failed, by feed."""
        failed: dict[str, set[int]] = {}
        for key in self.listing():
            if key.startswith("_runs/"):
                for failure in self.read_json(key)["failures"]:
                    start = failure["window"].strip("[)").split(",")[0].strip()
                    failed.setdefault(failure["feed"], set()).add(epoch(start))
        return failed

    def head(self) -> Any:
        return self.read_json("_manifest/_head.json")

    def partitions(self) -> list[Any]:
        return [
            self.read_json(k)
            for k in self.listing()
            if re.fullmatch(r"_manifest/[a-z_]+/\d{4}-\d{2}\.json", k)
        ]

    def data_files(self) -> list[str]:
        """What a Hive reader takes for data: .parquet with no ``_``/``.`` path part."""
        return [
            k
            for k in self.listing()
            if k.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in k.split("/"))
        ]


def full_days(windows: set[int]) -> set[date]:
    """The UTC days all of whose hourly windows are in ``windows``."""
    days = {datetime.fromtimestamp(w, UTC).date() for w in windows}
    return {
        d
        for d in days
        if all(epoch(d.isoformat()) + h * STEP in windows for h in range(DAY // STEP))
    }


def expand(ranges: list[str]) -> set[date]:
    """``["2024-01-01..2024-01-03", "2024-01-05"]`` -> the dates."""
    out: set[date] = set()
    for text in ranges:
        first, _, last = text.partition("..")
        day = date.fromisoformat(first)
        end = date.fromisoformat(last or first)
        while day <= end:
            out.add(day)
            day += timedelta(days=1)
    return out


def status(lake: Lake) -> dict[str, Any]:
    done = v2(["status", "--out", lake.url, "--json", *lake.options()])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def status_failed(view: dict[str, Any]) -> set[int]:
    """The hourly windows a feed's status lists as failed."""
    out: set[int] = set()
    for failure in view["failures"]:
        out.update(range(epoch(failure["start"]), epoch(failure["end"]), STEP))
    return out


def truth(server: SimulatorThread, after: str, before: str, feeds: Sequence[str] = FEEDS) -> Any:
    return {
        f: server.dataset.truth(f, instant(after), instant(before), confidence=0, severity=0)
        for f in feeds
    }


def assert_migrated(lake: Lake) -> None:
    """No version 1 manifest object is left, and the head's mark is cleared."""
    left = [k for k in lake.listing() if V1_ENTRY.match(k)]
    assert not left, f"{len(left)} version 1 manifest objects left, e.g. {left[:3]}"
    head = lake.head()
    assert head is not None and head["legacy"] == "none", head and head["legacy"]


def assert_recorded_once(lake: Lake) -> None:
    """Each window is recorded once and lives in one file; the files are what is recorded.

    Local lakes only: every recorded file exists with its recorded size, no two files
    of a day claim one window, each complete window's rows are in its files, and the
    lake's visible data files are exactly the recorded ones.
    """
    root = Path(lake.url)
    recorded: set[str] = set()
    stamps_of = functools.cache(_stamps_of)  # files do not change while this looks
    for part in lake.partitions():
        files = part["files"]
        claimed: dict[str, set[int]] = {}
        for f in files:
            path = root / f["key"]
            assert path.stat().st_size == f["size"], f["key"]
            recorded.add(f["key"])
            mine = {w for a, b in f["windows"] for w in range(a, b, STEP)}
            day = claimed.setdefault(f["day"], set())
            assert not day & mine, f"{f['key']} claims windows another file of its day holds"
            day |= mine
        for start, end, _, rows, _, _, held in part["windows"]:
            found = 0
            for i in held:
                stamps = stamps_of(root / files[i]["key"])
                found += bisect_left(stamps, end) - bisect_left(stamps, start)
            assert found == rows, (part["feed"], start, found, rows)
    assert set(lake.data_files()) == recorded, sorted(set(lake.data_files()) ^ recorded)[:5]


def _stamps_of(path: Path) -> list[int]:
    """A data file's record stamps in epoch seconds, sorted."""
    table = pq.read_table(path, columns=["timestamp"], partitioning=None)
    return sorted(ms // 1000 for ms in table.column("timestamp").cast("int64").to_pylist())


def day_files(lake: Lake) -> dict[tuple[str, str], list[str]]:
    """Data files per (feed, day)."""
    out: dict[tuple[str, str], list[str]] = {}
    for key in lake.data_files():
        feed, folder, _ = key.split("/", 2)
        out.setdefault((feed, folder.removeprefix("dt=")), []).append(key)
    return out


# --- v1 lakes -----------------------------------------------------------------------


def sim(**options: Any) -> SimulatorThread:
    options.setdefault("api_key", SIM_KEY)
    options.setdefault("dataset", DATASET)
    options.setdefault("max_limit", 50)
    return SimulatorThread(ServerOptions(**options))


@pytest.fixture
def servers() -> Iterator[tuple[SimulatorThread, SimulatorThread]]:
    """Two simulators of one dataset: healthy, and one whose ``urls`` feed always fails."""
    with sim() as good, sim(faults=Faults(fail_always=(FAILING,))) as bad:
        yield good, bad


def write_v1_lake(v1: Version1, lake: Lake, good: SimulatorThread, bad: SimulatorThread) -> None:
    """A version 1 lake of 1h windows: 2024-01-01 to 2024-01-04T12:00, ``urls`` failed.

    The first run (01-01 to 01-03) meets an API whose ``urls`` feed always fails, so its
    report lists those windows as failed; the second (to mid-day 01-04, leaving that
    day partly complete) meets a healthy one.
    """
    first = v1.run(
        run_args(lake.url, bad.url, "2024-01-01", "2024-01-03", "--attempts", "1") + lake.options()
    )
    assert first.returncode == 1, first.stderr[-2000:]
    second = v1.run(
        run_args(lake.url, good.url, "2024-01-03", "2024-01-04T12:00:00Z") + lake.options()
    )
    assert second.returncode == 0, second.stderr[-2000:]
    keys = lake.listing()
    assert any(V1_ENTRY.match(k) for k in keys), "version 1 wrote no manifest objects"
    assert any(V1_FILE.search(k) for k in keys), "version 1 wrote no per-window files"
    assert not any(k.startswith("_manifest/_head") for k in keys)


class Requests:
    """A recording proxy in front of the simulator: every feed request's span."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def spans(self) -> list[tuple[str, int, int]]:
        """(feed, first second owned, end) of every feed request since the proxy started."""
        out = []
        for _, path_qs, _ in self.proxy.stats.headers:
            parts = urlsplit(path_qs)
            feed = parts.path.rsplit("/", 1)[-1]
            query = parse_qs(parts.query)
            after = int(parse_api(query["after"][0]).timestamp())
            before = int(parse_api(query["before"][0]).timestamp())
            # ``after`` is one second early by design (README, "Windows").
            out.append((feed, after + 1, before))
        return out


@pytest.fixture
def recorder() -> Iterator[Callable[[str], Requests]]:
    """``recorder(sim_url)``: a proxy that forwards to the simulator and records requests."""
    with contextlib.ExitStack() as stack:

        def make(upstream: str) -> Requests:
            proxy = FaultProxy(upstream, rate=0.0, match=lambda _m, p: "/iocs/feeds/" in p)
            return Requests(stack.enter_context(proxy))

        yield make


def assert_no_request_for(requests: Requests, complete: dict[str, set[int]]) -> None:
    """No request asked for any second of a window that was complete."""
    for feed, low, high in requests.spans():
        asked = {w for w in complete.get(feed, set()) if low < w + STEP and w < high}
        assert not asked, (
            f"a {feed} request for [{low}, {high}) asked again for {len(asked)} complete windows"
        )


# --- 1 and 6: a plain run migrates --------------------------------------------------


def check_plain_run_migrates(
    v1: Version1, lake: Lake, good: SimulatorThread, bad: SimulatorThread, recorder: Any
) -> None:
    write_v1_lake(v1, lake, good, bad)
    complete = lake.v1_complete()
    still_failed = {f: w - complete.get(f, set()) for f, w in lake.v1_failed().items()}
    assert still_failed[FAILING], "the first version 1 run should have failed urls windows"
    days = {f: full_days(w) for f, w in complete.items()}
    assert days["ips"] - days[FAILING], "urls should lack days the other feeds have"

    # The API still fails urls: the migrating run asks only for urls' failed windows.
    requests = recorder(bad.url)
    bad.reset_stats()
    first = v2(
        run_args(lake.url, requests.url, "2024-01-01", "2024-01-04T12:00:00Z", "--attempts", "1")
        + lake.options()
    )
    assert first.returncode == 1, first.stderr[-3000:]
    assert requests.spans(), "the failed urls windows were not asked for"
    assert {feed for feed, _, _ in requests.spans()} == {FAILING}
    assert set(bad.stats.by_feed) == {FAILING}  # the simulator's own count agrees
    assert bad.stats.by_feed[FAILING] == len(requests.spans())
    assert_no_request_for(requests, complete)
    assert_migrated(lake)
    view = status(lake)
    for feed in FEEDS:
        assert expand(view["feeds"][feed]["complete"]) == days[feed], feed
        assert status_failed(view["feeds"][feed]) == still_failed.get(feed, set()), feed
    assert_lake_exact(
        lake.url,
        recorded_truth(good, complete),
        con=lake_connection(lake),
    )

    # The API is back: the next run asks for nothing but the failed windows, and the
    # lake is exact.
    requests = recorder(good.url)
    good.reset_stats()
    second = v2(
        run_args(lake.url, requests.url, "2024-01-01", "2024-01-04T12:00:00Z") + lake.options()
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert {feed for feed, _, _ in requests.spans()} == {FAILING}
    assert set(good.stats.by_feed) == {FAILING}
    assert_no_request_for(requests, complete)
    assert_lake_exact(
        lake.url, truth(good, "2024-01-01", "2024-01-04T12:00:00Z"), con=lake_connection(lake)
    )
    view = status(lake)
    for feed in FEEDS:
        assert expand(view["feeds"][feed]["complete"]) == days["ips"], feed
        assert view["feeds"][feed]["failures"] == [], feed
    assert_migrated(lake)

    # Once more: nothing to ask, and a head in step with its partitions is left alone.
    requests = recorder(good.url)
    third = v2(
        run_args(lake.url, requests.url, "2024-01-01", "2024-01-04T12:00:00Z") + lake.options()
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert requests.spans() == []
    assert "manifest.head_healed" not in third.stderr


def recorded_truth(server: SimulatorThread, complete: dict[str, set[int]]) -> Any:
    """The simulator's records of the windows ``complete`` holds, per feed."""
    out = {}
    for feed in FEEDS:
        items = []
        for start in sorted(complete.get(feed, set())):
            low = datetime.fromtimestamp(start, UTC)
            items += server.dataset.truth(
                feed, low, low + timedelta(seconds=STEP), confidence=0, severity=0
            )
        out[feed] = items
    return out


def with_range(complete: dict[str, set[int]], after: str, before: str) -> dict[str, set[int]]:
    """``complete`` plus every window of ``[after, before)``, for every feed."""
    hours = set(range(epoch(after), epoch(before), STEP))
    return {f: complete.get(f, set()) | hours for f in FEEDS}


def lake_connection(lake: Lake) -> duckdb.DuckDBPyConnection | None:
    return duckdb_for_s3(lake.endpoint) if lake.on_s3 and lake.endpoint else None


@pytest.mark.slow
def test_plain_run_migrates_a_v1_lake(
    v1: Version1, tmp_path: Path, servers: Any, recorder: Any
) -> None:
    """A v1 lake (failed urls windows in _runs/) migrates on a plain run: nothing asked twice."""
    good, bad = servers
    check_plain_run_migrates(v1, Lake(str(tmp_path / "lake")), good, bad, recorder)


@pytest.mark.slow
def test_plain_run_migrates_a_v1_lake_on_s3(
    v1: Version1, s3_bucket: tuple[str, str], servers: Any, recorder: Any
) -> None:
    """The same on S3 (moto's server): version 1 and this version both write the bucket."""
    endpoint, bucket = s3_bucket
    good, bad = servers
    check_plain_run_migrates(v1, Lake(f"s3://{bucket}/lake", endpoint), good, bad, recorder)


# --- 4: status reads a v1 lake without writing --------------------------------------


@pytest.mark.slow
def test_status_reads_a_v1_lake_and_writes_nothing(
    v1: Version1, tmp_path: Path, servers: Any
) -> None:
    """``status`` (and ``plan``) on a v1 lake: what v1 recorded, and no byte changed."""
    good, bad = servers
    lake = Lake(str(tmp_path / "lake"))
    write_v1_lake(v1, lake, good, bad)
    before = lake.digests()
    stamps = {p: p.stat().st_mtime_ns for p in Path(lake.url).rglob("*")}
    complete = lake.v1_complete()
    failed = lake.v1_failed()

    view = status(lake)
    text = v2(["status", "--out", lake.url])
    assert text.returncode == 0, text.stderr
    # plan reads it the same way: what version 1 completed is done
    args = run_args(lake.url, good.url, "2024-01-01", "2024-01-05", "--json")
    planned = v2(["plan", *[a for a in args[1:] if a != "--no-progress"]])
    assert planned.returncode == 0, planned.stderr
    plan_feeds = json.loads(planned.stdout)["feeds"]

    assert lake.digests() == before
    assert {p: p.stat().st_mtime_ns for p in Path(lake.url).rglob("*")} == stamps
    assert set(view["feeds"]) == set(FEEDS)
    for feed in FEEDS:
        got = view["feeds"][feed]
        assert expand(got["complete"]) == full_days(complete[feed]), feed
        assert got["windows"] == len(complete[feed])
        assert got["rows"] == len(recorded_truth(good, complete)[feed])
        assert plan_feeds[feed]["done"] == len(complete[feed]), feed
        assert plan_feeds[feed]["todo"] == 4 * 24 - len(complete[feed]), feed
        assert status_failed(got) == failed.get(feed, set()) - complete[feed], feed
        # mid-day 2024-01-04 is partly complete: neither complete nor missing
        assert "2024-01-04" in got["partial"], got
    assert view["window_seconds"] == STEP
    assert view["feeds"][FAILING]["failed_days"] == 2


# --- 5: an orphan v1 file -----------------------------------------------------------


@pytest.mark.slow
def test_orphan_v1_file_is_replaced_by_the_next_run_of_its_day(
    v1: Version1, tmp_path: Path, servers: Any
) -> None:
    """A v1 file no manifest object names (v1 killed before recording it) never doubles rows.

    Deleting a version 1 manifest object leaves exactly what version 1 leaves when it is
    killed between writing a window's file and recording it.
    """
    good, bad = servers
    lake = Lake(str(tmp_path / "lake"))
    write_v1_lake(v1, lake, good, bad)
    orphan = next(
        k for k in lake.data_files() if k.startswith("ips/dt=2024-01-02/") and V1_FILE.search(k)
    )
    start, end = re.findall(r"\d{8}T\d{6}Z", orphan)
    (Path(lake.url) / f"_manifest/ips/{start}_{end}.json").unlink()
    complete = lake.v1_complete()
    assert compact(start) not in complete["ips"]

    # A run of another day migrates the lake: the orphan stays, its rows once.
    first = v2(run_args(lake.url, good.url, "2024-01-01", "2024-01-02"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert_migrated(lake)
    assert orphan in lake.data_files()
    complete = with_range(complete, "2024-01-01", "2024-01-02")  # urls failed there in v1
    rows = {f: len(lake_rows(lake.url, f)) for f in FEEDS}
    expected = recorded_truth(good, complete)
    orphan_rows = pq.read_metadata(Path(lake.url) / orphan).num_rows
    assert orphan_rows > 0
    assert rows["ips"] == len(expected["ips"]) + orphan_rows
    view = status(lake)
    assert "2024-01-02" in view["feeds"]["ips"]["partial"]

    # The next run of that day harvests the orphan's window and folds the day.
    second = v2(run_args(lake.url, good.url, "2024-01-02", "2024-01-03"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert orphan not in lake.data_files()
    assert day_files(lake)[("ips", "2024-01-02")] == [
        "ips/dt=2024-01-02/part-20240102T000000Z.parquet"
    ]
    complete = with_range(complete, "2024-01-02", "2024-01-03")
    assert_lake_exact(lake.url, recorded_truth(good, complete))
    assert_recorded_once(lake)
    view = status(lake)
    assert "2024-01-02" not in expand(view["feeds"]["ips"]["partial"])
    assert date(2024, 1, 2) in expand(view["feeds"]["ips"]["complete"])


@pytest.mark.slow
def test_indicators_count_what_a_v1_lake_records_before_and_after_its_migration(
    v1: Version1, tmp_path: Path, servers: Any
) -> None:
    """The indicator table of a v1 lake: its recorded windows, an orphan file left out.

    Before the migration it is read from the version 1 manifest (in memory: the lake is
    not written); after, the orphan is recorded holding no complete window, and is still
    left out.
    """
    good, bad = servers
    lake = Lake(str(tmp_path / "lake"))
    write_v1_lake(v1, lake, good, bad)
    orphan = next(
        k for k in lake.data_files() if k.startswith("ips/dt=2024-01-02/") and V1_FILE.search(k)
    )
    start, end = re.findall(r"\d{8}T\d{6}Z", orphan)
    (Path(lake.url) / f"_manifest/ips/{start}_{end}.json").unlink()
    assert pq.read_metadata(Path(lake.url) / orphan).num_rows > 0
    complete = lake.v1_complete()
    before = lake.digests()

    assert build(lake.url).rebuild
    assert table_rows(lake.url) == expected_table(recorded_truth(good, complete))
    mine = ("indicators/", "_indicators/")
    assert {k: v for k, v in lake.digests().items() if not k.startswith(mine)} == before

    first = v2(run_args(lake.url, good.url, "2024-01-01", "2024-01-02"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert_migrated(lake)
    assert orphan in lake.data_files()
    complete = with_range(complete, "2024-01-01", "2024-01-02")
    updated = build(lake.url)
    assert not updated.rebuild
    assert table_rows(lake.url) == expected_table(recorded_truth(good, complete))
    build(lake.url, rebuild=True)
    assert table_rows(lake.url) == expected_table(recorded_truth(good, complete))


# --- 2: re-harvesting migrated days, watched by a reader -----------------------------


@dataclass
class Watch:
    """What a reader polling the lake saw: never a row more often than the API has it."""

    polls: int = 0
    torn: int = 0
    """Polls that failed because a file went away while DuckDB read the folder."""
    short: int = 0
    """Polls that missed rows (a day being folded: documented, allowed)."""
    doubled: list[str] | None = None

    def look(self, root: str, truth: dict[str, list[dict[str, Any]]]) -> None:
        con = duckdb.connect()
        try:
            seen = {}
            for feed in truth:
                glob = f"{root}/{feed}/*/*.parquet"
                relation = con.execute(
                    "SELECT * REPLACE (epoch(timestamp)::BIGINT AS timestamp), dt::VARCHAR AS dt "
                    "FROM read_parquet(?, hive_partitioning = true)",
                    [glob],
                )
                names = [d[0] for d in relation.description]
                seen[feed] = [dict(zip(names, r, strict=True)) for r in relation.fetchall()]
        except duckdb.Error:
            self.torn += 1
            return
        finally:
            con.close()
        self.polls += 1
        for feed, rows in seen.items():
            got = Counter(_canonical(rebuild(r)) for r in rows)
            want = Counter(_canonical(i) for i in truth[feed])
            extra = got - want
            if extra and self.doubled is None:
                self.doubled = [
                    f"{feed}: {sum(extra.values())} rows too many, e.g. {next(iter(extra))!r}"
                ]
            if want - got:
                self.short += 1


def watch_run(args: list[str], root: str, truth: dict[str, list[dict[str, Any]]]) -> Watch:
    """Run this version with ``args`` while a reader polls the lake; then one last look."""
    watch = Watch()
    process = start_v2(args)
    try:
        while process.poll() is None:
            watch.look(root, truth)
    finally:
        process.wait(timeout=300)
    assert process.returncode == 0, f"run exited {process.returncode}"
    running = watch.polls
    watch.look(root, truth)
    assert running > 0, "the reader never read the lake while the run ran"
    return watch


@pytest.mark.slow
def test_reharvesting_migrated_days_folds_them_and_no_reader_sees_duplicates(
    v1: Version1, tmp_path: Path
) -> None:
    """--force over two migrated days, then a range that extends the lake, watched by DuckDB.

    A reader polling throughout never sees a row more often than the API holds it; the
    days written end with exactly one file per (feed, day), the untouched days keep
    their version 1 files as they were, and the lake is exact.
    """
    # Slow pages, so the reader polls many times during each run.
    with sim(latency=0.03) as good, sim(faults=Faults(fail_always=(FAILING,))) as bad:
        lake = Lake(str(tmp_path / "lake"))
        write_v1_lake(v1, lake, good, bad)
        migrate = v2(run_args(lake.url, good.url, "2024-01-01", "2024-01-04T12:00:00Z"))
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        assert_migrated(lake)
        # 2024-01-01 of ips and domains (v1 harvested them) is never written again.
        untouched = {
            k: h for k, h in lake.digests().items() if k.split("/")[1:2] == ["dt=2024-01-01"]
        }
        assert sum(1 for k in untouched if V1_FILE.search(k)) > 2 * 20  # >20 files a day
        everything = truth(good, "2024-01-01", "2024-01-04T12:00:00Z")
        assert_lake_exact(lake.url, everything)

        # --force over two migrated days of v1 files: each is folded into one file.
        forced = run_args(
            lake.url, good.url, "2024-01-02", "2024-01-04", "--force",
            "--commit-every", "0.1", "--max-span", "6h",
        )  # fmt: skip
        watch = watch_run(forced, lake.url, everything)
        assert watch.doubled is None, watch.doubled

        # A later range that extends the lake: the rest of 01-04 (whose first half is
        # v1 files, folded with the new windows) and two new days.
        extended = run_args(
            lake.url, good.url, "2024-01-04T12:00:00Z", "2024-01-07",
            "--commit-every", "0.1", "--max-span", "6h",
        )  # fmt: skip
        everything = truth(good, "2024-01-01", "2024-01-07")
        watch_more = watch_run(extended, lake.url, everything)
        assert watch_more.doubled is None, watch_more.doubled
        print(f"reader: {watch}, then {watch_more}")

    files = day_files(lake)
    with_rows = {(f, i["timestamp"][:10]) for f, items in everything.items() for i in items}
    for feed in FEEDS:
        for day in ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]:
            want = [f"{feed}/dt={day}/part-{day.replace('-', '')}T000000Z.parquet"]
            got = files.get((feed, day), [])
            assert got == (want if (feed, day) in with_rows else []), (feed, day, got)
        if feed != FAILING:  # version 1 harvested its 2024-01-01: left as it was
            assert files[(feed, "2024-01-01")], feed
            assert all(V1_FILE.search(k) for k in files[(feed, "2024-01-01")]), feed
    now = lake.digests()
    assert all(now.get(k) == h for k, h in untouched.items()), "an untouched day changed"
    assert_lake_exact(lake.url, everything)
    assert_recorded_once(lake)
    assert_migrated(lake)


# --- 3: kill -9 during the migration and during the folding --------------------------

BIG_FEEDS = ["ips", "domains", "urls", "artifacts", "paths", "network_streams", "registry_keys"]
BIG_AFTER, BIG_BEFORE = "2024-01-01", "2024-03-01"
BIG_DATASET = DatasetSpec(seed=11, rows_per_day=48)


def big_args(
    out: str | Path, url: str, *extra: str, after: str = BIG_AFTER, before: str = BIG_BEFORE
) -> list[str]:
    return run_args(out, url, after, before, "--limit", "1000", "--concurrency", "16",
                    *extra, feeds=BIG_FEEDS)  # fmt: skip


@pytest.fixture(scope="module")
def big_sim() -> Iterator[SimulatorThread]:
    with sim(dataset=BIG_DATASET, max_limit=1000) as server:
        yield server


@pytest.fixture(scope="module")
def big_v1_lake(
    v1: Version1, big_sim: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A version 1 lake of 7 feeds x 60 days of 1h windows: ~10,000 manifest objects."""
    out = tmp_path_factory.mktemp("big") / "v1"
    done = v1.run(big_args(out, big_sim.url, "--log-level", "warning"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def v1_objects(out: Path) -> int:
    folder = out / "_manifest"
    return sum(
        1 for feed in BIG_FEEDS if (folder / feed).is_dir()
        for name in os.listdir(folder / feed) if "_" in name
    )  # fmt: skip


def migration_phase(out: Path) -> str:
    """Where a migration stands: v1 / partitions (no head yet) / cleanup / done."""
    head = Lake(str(out)).head()
    if head is not None:
        return "cleanup" if head["legacy"] == "cleanup" else "done"
    parts = list((out / "_manifest").glob("*/????-??.json"))
    return "partitions" if parts else "v1"


def kill_when(process: subprocess.Popen[str], ready: Callable[[], bool], limit: float) -> bool:
    """SIGKILL ``process`` once ``ready()`` holds (or ``limit`` s passed); False if it ended."""
    deadline = time.monotonic() + limit
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return True


def visible_rows_at_most_once(
    out: Path, truth: dict[str, list[dict[str, Any]]], days: Sequence[str] | None = None
) -> None:
    """No row of the lake (of ``days``) is there more often than the API has it.

    Missing rows are allowed (a fold deletes before it writes). DuckDB reads the files
    a Hive reader would; with ``days``, only those days' folders, to keep it quick.
    """
    con = duckdb.connect()
    for feed, items in truth.items():
        if days is None:
            rows = lake_rows(str(out), feed, con=con)
        else:
            files = [
                str(path)
                for day in days
                for path in sorted((out / feed / f"dt={day}").glob("*.parquet"))
            ]
            relation = con.execute(
                "SELECT * REPLACE (epoch(timestamp)::BIGINT AS timestamp), dt::VARCHAR AS dt "
                "FROM read_parquet(?, hive_partitioning = true)",
                [files],
            )
            names = [d[0] for d in relation.description]
            rows = [dict(zip(names, r, strict=True)) for r in relation.fetchall()]
        got = Counter(_canonical(rebuild(r)) for r in rows)
        extra = got - Counter(_canonical(i) for i in items)
        assert not extra, f"{feed}: {sum(extra.values())} rows visible twice"


@pytest.mark.slow
def test_kill_during_migration_then_run_is_exact(
    big_v1_lake: Path, big_sim: SimulatorThread, tmp_path: Path
) -> None:
    """Kill -9 while ~10,000 v1 objects migrate, at random and in each phase; then exact.

    First at random moments (each new process starts the migration again until its
    head is written), then aimed: once the first partition is written (before the
    head), once the head is written (cleanup begun), once half the v1 objects are
    deleted. A new process is started after each kill.
    """
    out = tmp_path / "lake"
    shutil.copytree(big_v1_lake, out)
    data = sorted(Lake(str(out)).data_files())
    total = v1_objects(out)
    assert total == len(BIG_FEEDS) * 60 * 24
    rng = random.Random(20240101)
    never: Callable[[], bool] = lambda: False  # noqa: E731
    aims: list[tuple[str, Callable[[], bool], float]] = [
        (f"{delay:.2f}s", never, delay) for delay in (rng.uniform(0.3, 2.5) for _ in range(5))
    ]
    aims += [
        ("a partition", lambda: migration_phase(out) != "v1", 60.0),
        ("the head", lambda: migration_phase(out) in ("cleanup", "done"), 60.0),
        ("half deleted", lambda: v1_objects(out) < total // 2, 60.0),
    ]
    landed = []
    for name, ready, limit in aims:
        if migration_phase(out) == "done":
            break
        process = start_v2(big_args(out, big_sim.url))
        if kill_when(process, ready, limit):
            landed.append((name, migration_phase(out), v1_objects(out)))
        # Migration never touches data: a reader sees the v1 files throughout.
        assert sorted(Lake(str(out)).data_files()) == data
    print("killed at", landed)
    # At least one kill left a migration half done (partitions written, v1 objects left).
    assert any(phase != "v1" and left > 0 for _, phase, left in landed), landed

    big_sim.reset_stats()
    final = v2(big_args(out, big_sim.url))
    assert final.returncode == 0, final.stderr[-3000:]
    assert big_sim.stats.requests == 0, "a complete window was asked for again"
    lake = Lake(str(out))
    assert_migrated(lake)
    assert sorted(lake.data_files()) == data
    assert_recorded_once(lake)
    assert_lake_exact(str(out), truth(big_sim, BIG_AFTER, BIG_BEFORE, BIG_FEEDS))
    view = status(lake)
    for feed in BIG_FEEDS:
        assert view["feeds"][feed]["complete"] == ["2024-01-01..2024-02-29"], feed
        assert view["feeds"][feed]["windows"] == 60 * 24


@pytest.mark.slow
def test_kill_during_folding_of_v1_days_then_run_is_exact(
    big_v1_lake: Path, big_sim: SimulatorThread, tmp_path: Path
) -> None:
    """Kill -9 while --force folds three weeks of migrated v1 days; no reader sees a row twice."""
    out = tmp_path / "lake"
    shutil.copytree(big_v1_lake, out)
    migrated = v2(big_args(out, big_sim.url))
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    everything = truth(big_sim, BIG_AFTER, BIG_BEFORE, BIG_FEEDS)
    forced_days = [f"2024-01-{d:02d}" for d in range(20, 32)] + [
        f"2024-02-{d:02d}" for d in range(1, 10)
    ]  # across a month's end: two partitions are marked and folded

    def legacy_files() -> int:
        count = 0
        for feed in BIG_FEEDS:
            for day in forced_days:
                folder = out / feed / f"dt={day}"
                if folder.is_dir():
                    count += sum(1 for n in os.listdir(folder) if V1_FILE.search("/" + n))
        return count

    start = legacy_files()
    assert start > 1000
    forced = big_args(
        out, big_sim.url, "--force", "--commit-every", "0.2", "--max-span", "2d",
        after="2024-01-20", before="2024-02-10",
    )  # fmt: skip
    rng = random.Random(7)
    never: Callable[[], bool] = lambda: False  # noqa: E731
    aims: list[tuple[str, Callable[[], bool], float]] = [
        ("first fold", lambda: legacy_files() < start, 120.0),
        ("a third folded", lambda: legacy_files() < start * 2 // 3, 120.0),
    ]
    aims += [(f"{d:.2f}s", never, d) for d in (rng.uniform(0.5, 4.0) for _ in range(4))]
    landed = []
    for name, ready, limit in aims:
        before = legacy_files()
        process = start_v2(forced)
        if kill_when(process, ready, limit):
            landed.append((name, before, legacy_files()))
        visible_rows_at_most_once(out, everything, forced_days)
        if not legacy_files():
            break
    print("killed at", landed)
    assert any(after < before for _, before, after in landed), landed

    final = v2(big_args(out, big_sim.url))
    assert final.returncode == 0, final.stderr[-3000:]
    lake = Lake(str(out))
    assert_lake_exact(str(out), everything)
    assert_recorded_once(lake)
    assert_migrated(lake)
    # A day is either its v1 files as they were, or one file: never a mix.
    for (feed, day), keys in day_files(lake).items():
        if not all(V1_FILE.search(k) for k in keys):
            assert keys == [f"{feed}/dt={day}/part-{day.replace('-', '')}T000000Z.parquet"], keys
    view = status(lake)
    for feed in BIG_FEEDS:
        assert view["feeds"][feed]["complete"] == ["2024-01-01..2024-02-29"], feed


# --- the head heals when a run has nothing to commit ---------------------------------


def test_a_run_with_nothing_to_do_heals_a_head_behind_its_partitions(
    make_sim: Callable[..., SimulatorThread], tmp_path: Path
) -> None:
    """A run killed between recording a partition and the head; the next run finds all done.

    Found by the folding kills above: the next run plans from the partitions, has
    nothing to commit, and used to leave the head -- what ``status`` and
    ``--since-last`` read -- saying the windows were missing.
    """
    server = make_sim()
    out = str(tmp_path / "lake")
    options = {"confidence": 0, "severity": 0, "feeds": "ips", "window": "1h"}
    assert harvest(server.url, out, **options).ok
    lake = Lake(out)
    part = next(p for p in lake.partitions() if p["feed"] == "ips")
    window = part["windows"][5]
    moment = datetime.fromtimestamp(window[0], UTC)

    async def rerecord() -> None:
        """Record the window in the partition again, and die before the head."""
        store = open_store(out)
        try:
            manifest = Manifest(store)
            await manifest.update_partition(
                "ips", part["month"], lambda p: p.with_changes(windows=[record]), token=None
            )
        finally:
            await store.close()

    record = Partition.from_json(part).windows[window[0]]
    forget(out, "ips", moment)
    asyncio.run(rerecord())
    assert date(2024, 1, 1) not in expand(status(lake)["feeds"]["ips"]["complete"])

    server.reset_stats()
    again = harvest(server.url, out, **options)
    assert again.ok
    assert server.stats.requests == 0
    view = status(lake)["feeds"]["ips"]
    assert expand(view["complete"]) == {date(2024, 1, d) for d in (1, 2, 3)}
    assert view["windows"] == 72
    head = lake.head()["feeds"]["ips"]["months"]["2024-01"]
    part = next(p for p in lake.partitions() if p["feed"] == "ips")
    assert head[1] == len(part["windows"]) == 72


@pytest.mark.slow
def test_a_fold_killed_half_way_is_finished_by_the_next_run(
    v1: Version1, tmp_path: Path, servers: Any
) -> None:
    """The states a killed fold leaves, made exactly; the next run ends with one file a day.

    A fold first marks the day's windows incomplete (its v1 files stay recorded), then
    deletes the v1 files, then writes and records the new file. Day 01-02 is left with
    some v1 files deleted; day 01-03 with all deleted and the new file written but not
    recorded. A reader sees no row twice in either, and the next run folds both.
    """
    good, bad = servers
    lake = Lake(str(tmp_path / "lake"))
    write_v1_lake(v1, lake, good, bad)
    migrated = v2(run_args(lake.url, good.url, "2024-01-01", "2024-01-04T12:00:00Z"))
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    root = Path(lake.url)
    days = ["2024-01-02", "2024-01-03"]

    async def mark() -> None:
        """What the committer writes before deleting a v1 file: windows out, files kept."""
        store = open_store(lake.url)
        try:
            manifest = Manifest(store)
            current = await manifest.read_partition("ips", "2024-01")
            drop = [
                w
                for f in current.part.files.values()
                if f.day in days
                for a, b in f.windows
                for w in range(a, b, STEP)
            ]
            done = await manifest.update_partition(
                "ips", "2024-01", lambda p: p.with_changes(drop_windows=drop), token=None
            )
            assert done.version is not None
            part: Partition = done.part
            version = done.version
            await manifest.update_head(lambda h: h.with_partition(part, version))  # type: ignore[union-attr]
        finally:
            await store.close()

    asyncio.run(mark())
    olds = {day: sorted((root / "ips" / f"dt={day}").glob("part-*_*.parquet")) for day in days}
    assert all(len(files) > 10 for files in olds.values())
    for path in olds["2024-01-02"][::2]:
        path.unlink()
    table = pa.concat_tables(pq.read_table(p, partitioning=None) for p in olds["2024-01-03"])
    for path in olds["2024-01-03"]:
        path.unlink()
    pq.write_table(table, root / "ips" / "dt=2024-01-03" / "part-20240103T000000Z.parquet")
    visible_rows_at_most_once(root, truth(good, "2024-01-01", "2024-01-04T12:00:00Z"))
    marked = expand(status(lake)["feeds"]["ips"]["complete"])
    assert not marked & {date(2024, 1, 2), date(2024, 1, 3)}
    checked = v2(["verify", "--out", lake.url, "--feeds", "ips", "--json"])
    found = json.loads(checked.stdout)["feeds"]["ips"]
    assert found["missing"] == []  # v1 files a fold deleted held nothing complete
    assert found["unrecorded"] == ["ips/dt=2024-01-03/part-20240103T000000Z.parquet"]

    again = v2(run_args(lake.url, good.url, "2024-01-01", "2024-01-04T12:00:00Z"))
    assert again.returncode == 0, again.stderr[-3000:]
    files = day_files(lake)
    for day in days:
        assert files[("ips", day)] == [f"ips/dt={day}/part-{day.replace('-', '')}T000000Z.parquet"]
    assert_lake_exact(lake.url, truth(good, "2024-01-01", "2024-01-04T12:00:00Z"))
    assert_recorded_once(lake)
    view = status(lake)["feeds"]["ips"]
    assert expand(view["complete"]) == {date(2024, 1, d) for d in (1, 2, 3)}


@pytest.mark.slow
def test_a_slower_migration_never_undoes_a_faster_runs_commits(
    v1: Version1, tmp_path: Path, servers: Any
) -> None:
    """Two runs migrate one v1 lake at once (shards starting together); one commits first.

    The slower run read the v1 manifest before the faster one deleted it, and writes its
    partitions after the faster one migrated, folded a day and recorded it. It must not
    put the day's deleted v1 files back on record: the next write of that day would
    find them missing and fail, on every run.
    """
    good, bad = servers
    lake = Lake(str(tmp_path / "lake"))
    write_v1_lake(v1, lake, good, bad)

    async def read_v1() -> tuple[Any, Any]:
        store = open_store(lake.url)
        try:
            keys = await legacy.legacy_keys(store)
            return await legacy.build(store, keys, table_format="hive")
        finally:
            await store.close()

    slow_head, slow_parts = asyncio.run(read_v1())
    fast = v2(run_args(lake.url, good.url, "2024-01-02", "2024-01-03", "--force"))
    assert fast.returncode == 0, fast.stderr[-3000:]
    folded = day_files(lake)[("ips", "2024-01-02")]
    assert folded == ["ips/dt=2024-01-02/part-20240102T000000Z.parquet"]

    async def finish_slow_migration() -> None:
        store = open_store(lake.url)
        try:
            await legacy.install(Manifest(store), slow_head, slow_parts)
        finally:
            await store.close()

    asyncio.run(finish_slow_migration())
    assert_migrated(lake)
    assert_recorded_once(lake)
    again = v2(run_args(lake.url, good.url, "2024-01-01", "2024-01-04T12:00:00Z", "--force"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_lake_exact(lake.url, truth(good, "2024-01-01", "2024-01-04T12:00:00Z"))
    assert_recorded_once(lake)
