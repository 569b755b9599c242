"""Sharding: N harvester processes split one job, write each object once and sum to it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.config import Shard
from harvester.lake import data_key
from harvester.manifest import entry_key
from harvester.planner import Unit, assign_shard, span_index
from harvester.schemas import FEEDS
from harvester.sim.data import DatasetSpec
from harvester.windows import Window, plan_windows

from cli import SIM_KEY
from harvesting import harvest
from lakecheck import assert_lake_exact, duckdb_for_s3
from s3_server import admin_client

DAY = timedelta(days=1)
START = datetime(2024, 1, 1, tzinfo=UTC)
SHARD_VARS = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")


# --- helpers -------------------------------------------------------------------------


def job_units(feeds: list[str], days: int) -> list[Unit]:
    """Every (feed, 1d window) of ``days`` days from START: the whole job."""
    windows = plan_windows(START, START + days * DAY, DAY)
    return [Unit(window=w, feed=f) for f in feeds for w in windows]


def owner(units: list[Unit], count: int) -> dict[Unit, str]:
    """Which shard ("I/N") each unit belongs to, per :func:`assign_shard`."""
    return {
        u: f"{i}/{count}"
        for i in range(count)
        for u in assign_shard(
            units, Shard(index=i, count=count), feeds=sorted({u.feed for u in units})
        )
    }


def run_args(url: str, out: str, feeds: list[str], days: int, *extra: str) -> list[str]:
    """``harvester run`` over ``days`` days from START, every record (scores 0)."""
    return [
        "run",
        "--after",
        START.date().isoformat(),
        "--before",
        (START + days * DAY).date().isoformat(),
        "--out",
        out,
        "--base-url",
        url,
        "--feeds",
        ",".join(feeds),
        "--confidence",
        "0",
        "--severity",
        "0",
        "--rate",
        "1000",
        "--no-progress",
        *extra,
    ]


@dataclass
class Proc:
    """A running ``python -m harvester``; its output goes to files, so no pipe fills up."""

    popen: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float = 60) -> int:
        """Wait for the exit; return the exit code."""
        return self.popen.wait(timeout=timeout)

    def stdout(self) -> str:
        """What the process printed on stdout."""
        return self.log.with_suffix(".out").read_text(errors="replace")

    def output(self) -> str:
        """Both streams, for failure messages."""
        return self.stdout() + self.log.with_suffix(".err").read_text(errors="replace")


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``python -m harvester ARGS`` now; no shard index variable unless in ``env``."""
    environ = {k: v for k, v in os.environ.items() if k not in SHARD_VARS}
    environ["THREATGRID_API_KEY"] = SIM_KEY
    environ.update(env or {})
    with log.with_suffix(".out").open("wb") as out, log.with_suffix(".err").open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "harvester", *args], env=environ, stdout=out, stderr=err
        )
    return Proc(popen=popen, log=log)


def run_all(procs: list[Proc], timeout: float = 60) -> None:
    """Wait for every process; each must exit 0."""
    codes = [p.wait(timeout) for p in procs]
    for proc, code in zip(procs, codes, strict=True):
        assert code == 0, f"{proc.log.name} exited {code}:\n{proc.output()[-3000:]}"


@dataclass
class Writes:
    """A ``match`` for a pass-through FaultProxy: records every request, faults none."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, method: str, path_qs: str) -> bool:
        """Record the request; never fault it."""
        with self.lock:
            self.seen.append((method, path_qs))
        return False

    def mark(self) -> int:
        """A position in the log, for :meth:`objects` ``since``."""
        with self.lock:
            return len(self.seen)

    def objects(self, bucket: str, *, since: int = 0) -> Counter[str]:
        """Objects written per key: a PutObject, or a completed multipart upload, is one.

        UploadPart (PUT with uploadId) and CreateMultipartUpload (POST ?uploads) are parts
        of one object, not objects of their own.
        """
        with self.lock:
            seen = self.seen[since:]
        written: Counter[str] = Counter()
        for method, path_qs in seen:
            parts = urlsplit(path_qs)
            query = parse_qs(parts.query, keep_blank_values=True)
            path = unquote(parts.path)
            if not path.startswith(f"/{bucket}/"):
                continue
            key = path.removeprefix(f"/{bucket}/")
            put_object = method == "PUT" and "uploadId" not in query
            completed = method == "POST" and "uploadId" in query
            if put_object or completed:
                written[key] += 1
        return written


def test_write_counter_counts_a_multipart_upload_as_one_object() -> None:
    """The PUT counter used below: a PutObject is one write, a whole multipart upload one."""
    writes = Writes()
    for method, path_qs in [
        ("PUT", "/b/lake/ips/dt%3D2024-01-01/part-a.parquet"),
        ("POST", "/b/lake/big.parquet?uploads"),
        ("PUT", "/b/lake/big.parquet?partNumber=1&uploadId=u1"),
        ("PUT", "/b/lake/big.parquet?partNumber=2&uploadId=u1"),
        ("POST", "/b/lake/big.parquet?uploadId=u1"),
        ("GET", "/b/lake/_manifest/ips/w.json"),
        ("DELETE", "/b/lake/ips/dt=2024-01-02/part-a.parquet"),
        ("PUT", "/other/lake/x.parquet"),
    ]:
        assert writes(method, path_qs) is False
    assert writes.objects("b") == Counter(
        {"lake/ips/dt=2024-01-01/part-a.parquet": 1, "lake/big.parquet": 1}
    )
    assert writes.objects("b", since=5) == Counter()


def lake_keys(endpoint: str, bucket: str, prefix: str) -> set[str]:
    """Every object key under ``prefix/`` in the bucket, without the prefix."""
    with admin_client(endpoint) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        return {
            item["Key"].removeprefix(f"{prefix}/")
            for page in pages
            for item in page.get("Contents", [])
        }


def split_keys(written: Counter[str], prefix: str) -> tuple[Counter[str], Counter[str]]:
    """(data objects, manifest entries) among the writes under ``prefix/``; probes aside."""
    data: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    for key, count in written.items():
        if not key.startswith(f"{prefix}/"):
            continue
        name = key.removeprefix(f"{prefix}/")
        if name.startswith("_manifest/") and not name.rsplit("/", 1)[-1].startswith("."):
            entries[name] += count
        elif not name.startswith(("_", ".")):
            data[name] += count
    return data, entries


def unit_of_key(units: list[Unit]) -> dict[str, Unit]:
    """Map each possible data object key and manifest key back to its unit (1d windows)."""
    keys = {}
    for unit in units:
        keys[entry_key(unit.feed, unit.window)] = unit
        for day in unit.window.days():
            keys[data_key(unit.feed, day, unit.window)] = unit
    return keys


def truth(server: Any, feeds: list[str], days: int) -> dict[str, list[dict[str, Any]]]:
    """What the simulator holds for the job, every score."""
    end = START + days * DAY
    return {f: server.dataset.truth(f, START, end, confidence=0, severity=0) for f in feeds}


def local_entries(out: Path) -> dict[str, dict[str, Any]]:
    """Manifest entries of a local lake, by key relative to the lake."""
    return {
        p.relative_to(out).as_posix(): json.loads(p.read_text())
        for p in (out / "_manifest").rglob("*.json")
    }


def local_reports(out: Path) -> dict[str, dict[str, Any]]:
    """Run reports of a local lake, by file name."""
    folder = out / "_runs"
    return (
        {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
        if folder.exists()
        else {}
    )


# --- N shards at once on S3 ----------------------------------------------------------


@pytest.mark.slow
def test_shards_at_once_make_an_exact_lake_and_write_each_object_once(
    sim: Any, s3_bucket: tuple[str, str], fault_proxy: Any, tmp_path: Path
) -> None:
    """Three shards started together: exact union on S3, every data/manifest object PUT once."""
    endpoint, bucket = s3_bucket
    writes = Writes()
    proxy = fault_proxy(rate=0, match=writes)
    feeds, days = ["ips", "domains", "urls"], 4
    units = job_units(feeds, days)
    out = f"s3://{bucket}/lake"
    procs = [
        start(
            run_args(
                sim.url, out, feeds, days, "--shard", f"{i}/3", "--s3-endpoint-url", proxy.url
            ),
            tmp_path / f"shard-{i}.log",
        )
        for i in range(3)
    ]
    run_all(procs)

    assert_lake_exact(out, truth(sim, feeds, days), con=duckdb_for_s3(endpoint))
    data, entries = split_keys(writes.objects(bucket), "lake")
    stored = lake_keys(endpoint, bucket, "lake")
    assert set(data) == {k for k in stored if not k.startswith("_")}
    assert {k: n for k, n in data.items() if n != 1} == {}, "a data object was written twice"
    assert entries == Counter({entry_key(u.feed, u.window): 1 for u in units})
    # each unit was written by the shard it belongs to, and every shard took part
    owners = owner(units, 3)
    with admin_client(endpoint) as client:
        for unit in units:
            body = client.get_object(Bucket=bucket, Key=f"lake/{entry_key(unit.feed, unit.window)}")
            assert json.loads(body["Body"].read())["shard"] == owners[unit], unit
    reports = sorted(k for k in stored if k.startswith("_runs/"))
    assert sorted(k.rsplit("-shard-", 1)[1] for k in reports) == [
        f"{i}-of-3.json" for i in range(3)
    ]


@pytest.mark.slow
def test_killed_shard_rerun_alone_completes_the_lake(
    make_sim: Any, s3_bucket: tuple[str, str], fault_proxy: Any, tmp_path: Path
) -> None:
    """SIGKILL one of three shards mid-run, re-run only it: exact lake, others untouched."""
    server = make_sim(max_limit=10, latency=0.03, dataset=DatasetSpec(seed=11, rows_per_day=120))
    endpoint, bucket = s3_bucket
    writes = Writes()
    proxy = fault_proxy(rate=0, match=writes)
    feeds, days, victim = ["ips", "domains", "urls"], 3, 1
    units = job_units(feeds, days)
    owners = owner(units, 3)
    mine = {u for u in units if owners[u] == f"{victim}/3"}
    by_key = unit_of_key(units)
    out = f"s3://{bucket}/lake"

    def args(i: int) -> list[str]:
        # one unit at a time: the shard takes a few seconds, so the kill lands mid-run
        extra = ("--shard", f"{i}/3", "--s3-endpoint-url", proxy.url, "--concurrency", "1")
        return run_args(server.url, out, feeds, days, *extra)

    procs = [start(args(i), tmp_path / f"shard-{i}.log") for i in range(3)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, entries = split_keys(writes.objects(bucket), "lake")
        if any(by_key[k] in mine for k in entries):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the victim shard never recorded a unit")
    assert procs[victim].popen.poll() is None, "the victim finished before it could be killed"
    procs[victim].popen.send_signal(signal.SIGKILL)
    assert procs[victim].wait() == -signal.SIGKILL
    run_all([p for i, p in enumerate(procs) if i != victim])

    stored = lake_keys(endpoint, bucket, "lake")
    recorded = {by_key[k] for k in stored if k.startswith("_manifest/") and "/." not in k}
    assert recorded >= set(units) - mine, "a shard that was not killed left a unit undone"
    left = mine - recorded
    assert left and left != mine, "the kill did not land mid-run"

    mark = writes.mark()
    rerun = start(args(victim), tmp_path / "rerun.log")
    run_all([rerun])
    assert_lake_exact(out, truth(server, feeds, days), con=duckdb_for_s3(endpoint))
    data, entries = split_keys(writes.objects(bucket, since=mark), "lake")
    # the re-run recorded exactly the units the killed shard had left, and touched no other
    assert {by_key[k] for k in entries} == left
    assert all(n == 1 for n in entries.values())
    assert {by_key[k] for k in data} <= left
    # over the whole test, every unit of the other shards was written once
    all_data, all_entries = split_keys(writes.objects(bucket), "lake")
    for key, count in (all_data + all_entries).items():
        if by_key[key] not in mine:
            assert count == 1, key
    reports = sorted(k for k in lake_keys(endpoint, bucket, "lake") if k.startswith("_runs/"))
    suffixes = Counter(k.rsplit("-shard-", 1)[1] for k in reports)
    assert suffixes == Counter({"0-of-3.json": 1, "1-of-3.json": 1, "2-of-3.json": 1})


# --- uneven splits -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shards", "feeds", "days"),
    [
        pytest.param(5, ["ips"], 2, id="5-shards-2-units"),
        pytest.param(4, ["ips", "domains", "urls"], 3, id="4-shards-9-units"),
    ],
)
def test_uneven_shards_are_disjoint_and_cover_the_job(
    sim: Any, tmp_path: Path, shards: int, feeds: list[str], days: int
) -> None:
    """More shards than units, or N not dividing them: idle shards exit 0, union exact."""
    out = tmp_path / "lake"
    units = job_units(feeds, days)
    owners = owner(units, shards)
    procs = [
        start(
            run_args(sim.url, str(out), feeds, days, "--shard", f"{i}/{shards}"),
            tmp_path / f"shard-{i}.log",
        )
        for i in range(shards)
    ]
    run_all(procs)

    assert_lake_exact(str(out), truth(sim, feeds, days))
    entries = local_entries(out)
    assert set(entries) == {entry_key(u.feed, u.window) for u in units}
    by_key = unit_of_key(units)
    for key, entry in entries.items():
        assert entry["shard"] == owners[by_key[key]], key
    # no unit was harvested by two shards: the shards' done counts sum to the job
    done: Counter[str] = Counter()
    for report in local_reports(out).values():
        done[report["parameters"]["shard"]] += sum(f["done"] for f in report["feeds"].values())
    assert sum(done.values()) == len(units)
    assert done == Counter(owners.values())


@settings(max_examples=300, deadline=None)
@given(
    feeds=st.lists(st.sampled_from(sorted(FEEDS)), min_size=1, max_size=7, unique=True),
    hours=st.sampled_from([1, 6, 24]),
    first=st.integers(-1000, 1000),
    windows=st.integers(0, 40),
    skip=st.integers(0, 40),
    count=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_assign_shard_is_disjoint_complete_balanced_and_stable(
    feeds: list[str], hours: int, first: int, windows: int, skip: int, count: int, seed: int
) -> None:
    """Shares partition a plan, are balanced, ignore order, and survive a later start."""
    step = timedelta(hours=hours)
    units = [
        Unit(window=Window(start=START + n * step, end=START + (n + 1) * step), feed=f)
        for n in range(first, first + windows)
        for f in feeds
    ]
    shares = [assign_shard(units, Shard(index=i, count=count), feeds=feeds) for i in range(count)]
    flat = [u for share in shares for u in share]
    assert len(flat) == len(set(flat)) == len(units)
    # shards are dealt whole spans (a day of sub-day windows, for one feed): as even as can be
    spans = [{(u.feed, span_index(u.window)) for u in share} for share in shares]
    assert all(not a & b for i, a in enumerate(spans) for b in spans[i + 1 :])
    sizes = [len(s) for s in spans]
    assert max(sizes) - min(sizes) <= 1
    shuffled = list(units)
    random.Random(seed).shuffle(shuffled)
    reordered = list(reversed(feeds))
    later = [u for u in shuffled if u.window.start >= START + (first + skip) * step]
    for i, share in enumerate(shares):
        # a shard that plans from a later start (--since-last) keeps the same units
        mine = assign_shard(later, Shard(index=i, count=count), feeds=reordered)
        assert mine == [u for u in share if u in set(later)]


def test_since_last_shard_that_starts_later_still_does_its_share(sim: Any, tmp_path: Path) -> None:
    """--since-last: shard 1/2 planning after shard 0/2 finished still completes the job."""
    out = str(tmp_path / "lake")
    for i in range(2):  # as when one index of a k8s Indexed Job or Batch array is retried
        result = harvest(
            sim.url,
            out,
            feeds="ips",
            before="2024-01-05",
            since_last=True,
            shard=f"{i}/2",
            confidence=0,
            severity=0,
        )
        assert result.ok
    assert_lake_exact(out, truth(sim, ["ips"], 4))


# --- the shard index from the scheduler's environment --------------------------------


@pytest.mark.parametrize("var", SHARD_VARS)
def test_shards_flag_takes_the_index_from_the_scheduler(sim: Any, tmp_path: Path, var: str) -> None:
    """--shards 3 with JOB_COMPLETION_INDEX / AWS_BATCH_JOB_ARRAY_INDEX=2 runs shard 2/3."""
    out = tmp_path / "lake"
    feeds, days = ["ips", "domains"], 3
    units = job_units(feeds, days)
    args = run_args(sim.url, str(out), feeds, days, "--shards", "3", "--rate", "300")
    proc = start(args, tmp_path / "run.log", env={var: "2"})
    run_all([proc])

    expected = {
        entry_key(u.feed, u.window)
        for u in assign_shard(units, Shard(index=2, count=3), feeds=feeds)
    }
    entries = local_entries(out)
    assert set(entries) == expected
    assert {e["shard"] for e in entries.values()} == {"2/3"}
    (name, report), *others = local_reports(out).items()
    assert not others
    assert name.endswith("-shard-2-of-3.json")
    assert report["parameters"]["shard"] == "2/3"
    assert report["parameters"]["rate"] == pytest.approx(100.0)  # the job's 300/s over 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({}, "--shards needs JOB_COMPLETION_INDEX", id="no-index"),
        pytest.param({"JOB_COMPLETION_INDEX": "3"}, "shard 3/3 is invalid", id="index-too-big"),
        pytest.param(
            {"AWS_BATCH_JOB_ARRAY_INDEX": "x"}, "AWS_BATCH_JOB_ARRAY_INDEX='x'", id="not-a-number"
        ),
    ],
)
def test_shards_flag_without_a_usable_index_is_a_config_error(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """`run --shards N` with no, a too big or a non-numeric index: exit 2 with one clear line."""
    args = ["run", "--after", "2024-01-01", "--before", "2024-01-03", "--out", str(tmp_path)]
    proc = start([*args, "--shards", "3"], tmp_path / "run.log", env=env)
    assert proc.wait() == 2
    output = proc.output()
    assert message in output
    assert "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.err", "run.out"]  # no lake


def test_plan_shows_every_shards_share_outside_a_job(tmp_path: Path) -> None:
    """`plan --shards N` needs no job index: it shows all N shares, as the README promises."""
    args = ["plan", "--after", "2020-01-01", "--before", "2020-01-11", "--out", str(tmp_path)]
    proc = start([*args, "--shards", "8", "--json"], tmp_path / "plan.log")
    assert proc.wait() == 0, proc.output()
    view = json.loads(proc.stdout())
    assert [s["shard"] for s in view["shards"]] == [f"{i}/8" for i in range(8)]
    assert sum(s["units"] for s in view["shards"]) == view["units"] == 7 * 10


# --- plan shows each shard's share ---------------------------------------------------


def test_plan_json_shows_each_shards_share_summing_to_the_job(sim: Any, tmp_path: Path) -> None:
    """`plan --shards 3 --shard i/3 --json`: one job view for every i; shares sum to it."""
    out = tmp_path / "lake"
    feeds, days = ["ips", "domains"], 5
    units = job_units(feeds, days)
    first = harvest(
        sim.url, str(out), feeds=",".join(feeds), before="2024-01-06", shard="0/3"
    )  # shard 0 is done; 1 and 2 are not
    assert first.ok
    base = ["plan", "--after", "2024-01-01", "--before", "2024-01-06", "--out", str(out)]
    base += ["--base-url", sim.url, "--feeds", ",".join(feeds), "--shards", "3", "--json"]
    procs = [start([*base, "--shard", f"{i}/3"], tmp_path / f"plan-{i}.log") for i in range(3)]
    run_all(procs)
    views = [json.loads(p.stdout()) for p in procs]
    assert views[0] == views[1] == views[2]
    view = views[0]

    shares = [assign_shard(units, Shard(index=i, count=3), feeds=feeds) for i in range(3)]
    assert sorted(len(s) for s in shares) == [3, 3, 4]
    assert view["shards"] == [
        {"shard": f"{i}/3", "units": len(share), "todo": 0 if i == 0 else len(share)}
        for i, share in enumerate(shares)
    ]
    assert view["units"] == sum(s["units"] for s in view["shards"]) == len(units)
    assert view["todo"] == sum(s["todo"] for s in view["shards"]) == len(units) - len(shares[0])
    assert view["done"] == len(shares[0])
