"""Sharding: N harvester processes split one job, write each object once and sum to it."""

from __future__ import annotations

import json
import os
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
from harvester.intervals import Spans
from harvester.manifest.model import month_domain, months_between
from harvester.planner import shard_of, shard_share
from harvester.schemas import FEEDS
from harvester.sim.data import DatasetSpec

from cli import SIM_KEY
from harvesting import harvest
from lakecheck import assert_lake_exact, duckdb_for_s3
from s3_server import admin_client

DAY = timedelta(days=1)
START = datetime(2024, 1, 30, tzinfo=UTC)  # jobs straddle a month boundary: several blocks
SHARD_VARS = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")


# --- helpers -------------------------------------------------------------------------


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def job_blocks(feeds: list[str], days: int) -> list[tuple[str, str]]:
    """Every (feed, month) block of ``days`` days from START: the job's units of sharding."""
    months = months_between(epoch(START), epoch(START + days * DAY))
    return [(f, m) for f in feeds for m in months]


def owner(
    blocks: list[tuple[str, str]], count: int, feeds: list[str]
) -> dict[tuple[str, str], str]:
    """Which shard ("I/N") owns each block."""
    return {b: f"{shard_of(b[0], b[1], feeds=feeds, count=count)}/{count}" for b in blocks}


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


def truth(server: Any, feeds: list[str], days: int) -> dict[str, list[dict[str, Any]]]:
    """What the simulator holds for the job, every score."""
    end = START + days * DAY
    return {f: server.dataset.truth(f, START, end, confidence=0, severity=0) for f in feeds}


def local_reports(out: Path) -> dict[str, dict[str, Any]]:
    """Run reports of a local lake, by file name."""
    folder = out / "_runs"
    return (
        {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
        if folder.exists()
        else {}
    )


def partitions(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The manifest partitions of a local lake, by (feed, month)."""
    return {
        (p.parent.name, p.stem): json.loads(p.read_text())
        for p in (out / "_manifest").glob("*/*.json")
    }


def shard_of_run(reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Run id -> the shard it ran as, from the run reports."""
    return {r["run_id"]: r["parameters"]["shard"] for r in reports.values()}


# --- the rule ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    feeds=st.lists(st.sampled_from(sorted(FEEDS)), min_size=1, max_size=7, unique=True),
    hours=st.sampled_from([1, 6, 24]),
    first_month=st.integers(0, 400),
    months=st.integers(1, 30),
    skip_days=st.integers(0, 200),
    count=st.integers(1, 12),
)
def test_shares_are_whole_blocks_disjoint_complete_balanced_and_stable(
    feeds: list[str], hours: int, first_month: int, months: int, skip_days: int, count: int
) -> None:
    """(feed, month) blocks are dealt whole and evenly; a later start keeps the same owners."""
    step = hours * 3600
    start = epoch(datetime(1990 + first_month // 12, first_month % 12 + 1, 1, tzinfo=UTC))
    end = epoch(
        datetime(
            1990 + (first_month + months) // 12, (first_month + months) % 12 + 1, 1, tzinfo=UTC
        )
    )
    job = Spans.one(start, end)
    for feed in feeds:
        shares = [
            shard_share(job, feed=feed, shard=Shard(index=i, count=count), feeds=feeds, step=step)
            for i in range(count)
        ]
        union = Spans()
        for i, share in enumerate(shares):
            assert not (share & union), "two shards own the same time"
            union = union | share
            for low, high in share:  # whole months only
                assert months_between(low, high)[0] == datetime.fromtimestamp(low, UTC).strftime(
                    "%Y-%m"
                )
                assert (low, high) == (
                    month_domain(months_between(low, high)[0], step)[0],
                    high,
                )
            later = Spans.one(start + skip_days * 86_400, end)
            again = shard_share(
                later, feed=feed, shard=Shard(index=i, count=count), feeds=feeds, step=step
            )
            assert again == share & later  # --since-last: planning later keeps the owners
        assert union == job
    blocks = [(f, m) for f in feeds for m in months_between(start, end)]
    counts = Counter(shard_of(f, m, feeds=feeds, count=count) for f, m in blocks)
    sizes = [counts.get(i, 0) for i in range(count)]
    assert max(sizes) - min(sizes) <= 1


# --- N shards at once on S3 ----------------------------------------------------------


@pytest.mark.slow
def test_shards_at_once_make_an_exact_lake_and_write_each_data_object_once(
    sim: Any, s3_bucket: tuple[str, str], fault_proxy: Any, tmp_path: Path
) -> None:
    """Three shards started together: exact on S3; each day file PUT once, by its owner."""
    endpoint, bucket = s3_bucket
    writes = Writes()
    proxy = fault_proxy(rate=0, match=writes)
    feeds, days = ["ips", "domains", "urls"], 4
    blocks = job_blocks(feeds, days)
    owners = owner(blocks, 3, feeds)
    assert len(set(owners.values())) == 3  # every shard has work
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
    data, _ = split_keys(writes.objects(bucket), "lake")
    stored = lake_keys(endpoint, bucket, "lake")
    assert set(data) == {k for k in stored if not k.startswith("_")}
    assert {k: n for k, n in data.items() if n != 1} == {}, "a data object was written twice"
    with admin_client(endpoint) as client:

        def load(key: str) -> dict[str, Any]:
            return json.loads(client.get_object(Bucket=bucket, Key=f"lake/{key}")["Body"].read())

        reports = {k: load(k) for k in stored if k.startswith("_runs/")}
        shards = shard_of_run(reports)
        for feed, month in blocks:
            part = load(f"_manifest/{feed}/{month}.json")
            # the block's windows were harvested by the shard that owns the block
            assert {shards[r] for r in part["runs"]} == {owners[(feed, month)]}
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
    feeds, days, victim = ["ips", "domains", "urls"], 6, 1
    blocks = job_blocks(feeds, days)
    owners = owner(blocks, 3, feeds)
    mine = {b for b in blocks if owners[b] == f"{victim}/3"}
    out = f"s3://{bucket}/lake"

    def args(i: int) -> list[str]:
        # one span at a time, committing often: the kill lands between commits
        extra = ("--shard", f"{i}/3", "--s3-endpoint-url", proxy.url, "--concurrency", "1")
        more = ("--max-span", "1d", "--commit-every", "0.2")
        return run_args(server.url, out, feeds, days, *extra, *more)

    def day_files_of(keys: Any) -> set[str]:
        return {k for k in keys if k.endswith(".parquet")}

    def victims(keys: Any) -> set[str]:
        return {k for k in day_files_of(keys) if any(k.startswith(f"lake/{f}/") for f, _ in mine)}

    procs = [start(args(i), tmp_path / f"shard-{i}.log") for i in range(3)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not victims(writes.objects(bucket)):
        time.sleep(0.02)
    assert victims(writes.objects(bucket)), "the victim shard never wrote a day"
    assert procs[victim].popen.poll() is None, "the victim finished before it could be killed"
    procs[victim].popen.send_signal(signal.SIGKILL)
    assert procs[victim].wait() == -signal.SIGKILL
    run_all([p for i, p in enumerate(procs) if i != victim])

    others_before = {
        k: n
        for k, n in writes.objects(bucket).items()
        if k.endswith(".parquet") and k not in victims([k])
    }
    mark = writes.mark()
    rerun = start(args(victim), tmp_path / "rerun.log")
    run_all([rerun])
    assert_lake_exact(out, truth(server, feeds, days), con=duckdb_for_s3(endpoint))
    again = writes.objects(bucket, since=mark)
    # the re-run wrote only the victim's day files, and every other day file was written once
    assert day_files_of(again) <= victims(again)
    assert all(n == 1 for n in others_before.values())


# --- uneven splits -------------------------------------------------------------------


@pytest.mark.slow
def test_more_shards_than_blocks_leaves_some_idle_and_the_union_exact(
    sim: Any, tmp_path: Path
) -> None:
    """Five shards, two blocks: idle shards exit 0, the lake is exact, no block done twice."""
    out = tmp_path / "lake"
    feeds, days, shards = ["ips"], 4, 5
    blocks = job_blocks(feeds, days)
    owners = owner(blocks, shards, feeds)
    procs = [
        start(
            run_args(sim.url, str(out), feeds, days, "--shard", f"{i}/{shards}"),
            tmp_path / f"shard-{i}.log",
        )
        for i in range(shards)
    ]
    run_all(procs)
    assert_lake_exact(str(out), truth(sim, feeds, days))
    shards_of = shard_of_run(local_reports(out))
    for block, part in partitions(out).items():
        assert {shards_of[r] for r in part["runs"]} == {owners[block]}
    assert set(partitions(out)) == set(blocks)


def test_since_last_shard_that_starts_later_still_does_its_share(sim: Any, tmp_path: Path) -> None:
    """--since-last: shard 1/2 planning after shard 0/2 finished still completes the job."""
    out = str(tmp_path / "lake")
    for i in range(2):  # as when one index of a k8s Indexed Job or Batch array is retried
        result = harvest(
            sim.url,
            out,
            feeds="ips",
            after=START.date().isoformat(),
            before=(START + 4 * DAY).date().isoformat(),
            since_last=True,
            shard=f"{i}/2",
            confidence=0,
            severity=0,
        )
        assert result.ok
        assert result.feeds["ips"].done == 2  # January's two days, then February's two
    assert_lake_exact(out, truth(sim, ["ips"], 4))


# --- the shard index from the scheduler's environment --------------------------------


@pytest.mark.parametrize("var", SHARD_VARS)
def test_shards_flag_takes_the_index_from_the_scheduler(sim: Any, tmp_path: Path, var: str) -> None:
    """--shards 3 with JOB_COMPLETION_INDEX / AWS_BATCH_JOB_ARRAY_INDEX=2 runs shard 2/3."""
    out = tmp_path / "lake"
    feeds, days = ["ips", "domains"], 4
    blocks = job_blocks(feeds, days)
    args = run_args(sim.url, str(out), feeds, days, "--shards", "3", "--rate", "300")
    proc = start(args, tmp_path / "run.log", env={var: "2"})
    run_all([proc])

    mine = {b for b, o in owner(blocks, 3, feeds).items() if o == "2/3"}
    assert mine and set(partitions(out)) == mine
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
    first = harvest(
        sim.url,
        str(out),
        feeds=",".join(feeds),
        after=START.date().isoformat(),
        before=(START + days * DAY).date().isoformat(),
        shard="0/3",
    )  # shard 0 is done; 1 and 2 are not
    assert first.ok
    base = ["plan", "--after", START.date().isoformat()]
    base += ["--before", (START + days * DAY).date().isoformat(), "--out", str(out)]
    base += ["--base-url", sim.url, "--feeds", ",".join(feeds), "--shards", "3", "--json"]
    procs = [start([*base, "--shard", f"{i}/3"], tmp_path / f"plan-{i}.log") for i in range(3)]
    run_all(procs)
    views = [json.loads(p.stdout()) for p in procs]
    assert views[0] == views[1] == views[2]
    view = views[0]

    step = 86_400
    job = Spans.one(epoch(START), epoch(START + days * DAY))
    shares = [
        sum(
            shard_share(job, feed=f, shard=Shard(index=i, count=3), feeds=feeds, step=step).total
            // step
            for f in feeds
        )
        for i in range(3)
    ]
    assert sum(shares) == len(feeds) * days
    assert view["shards"] == [
        {"shard": f"{i}/3", "units": share, "todo": 0 if i == 0 else share}
        for i, share in enumerate(shares)
    ]
    assert view["units"] == sum(s["units"] for s in view["shards"]) == len(feeds) * days
    assert view["done"] == shares[0]
