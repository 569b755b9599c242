"""Crashes and signals: SIGKILL at random moments, SIGTERM/SIGINT, then resume to exact."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvester.sim.data import DatasetSpec

from cli import SIM_KEY, cli
from lakecheck import assert_lake_exact

pytestmark = pytest.mark.slow  # real processes, killed and signalled

FEEDS = ["ips", "domains", "urls", "paths"]
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 9, tzinfo=UTC)


def run_args(url: str, out: Path | str, *extra: str) -> list[str]:
    fixed = "--after 2024-01-01 --before 2024-01-09 --confidence 0 --severity 0 --concurrency 4"
    # Commit often and query a day at a time, so that a kill lands between many commits.
    fixed += " --commit-every 0.2 --max-span 1d"
    return [
        "run",
        *fixed.split(),
        "--rate",
        "500",
        "--out",
        str(out),
        "--base-url",
        url,
        "--feeds",
        ",".join(FEEDS),
        *extra,
    ]


def start(args: list[str], *, quiet: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "THREATGRID_API_KEY": SIM_KEY}
    sink = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", *args], env=env, text=True, stdout=sink, stderr=sink
    )


def kill_mid_run(args: list[str], progress: Callable[[], int], rng: random.Random) -> bool:
    """Start a run, wait until it has recorded a window, then SIGKILL it a moment later.

    Waiting for progress, rather than a fixed time, makes sure the kill lands while the
    run is busy writing however fast or slow the machine is today.
    """
    process = start(args, quiet=True)
    begin = progress()
    deadline = time.monotonic() + 60
    while process.poll() is None and progress() == begin and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3))
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return killed


# Paced at 40 requests/s, a window of ~9 pages takes about a quarter of a second: slow
# enough that every kill lands mid-run, fast enough for the test to stay short.
SLOW = ("--rate", "40")


def manifest_count(out: Path) -> int:
    """Complete windows the manifest records (the partitions' window counts)."""
    return sum(len(part["windows"]) for part in partitions(out))


def partitions(out: Path) -> list[dict[str, object]]:
    folder = out / "_manifest"
    return [json.loads(p.read_text()) for p in folder.glob("*/*.json")] if folder.exists() else []


def visible_data(out: Path) -> list[Path]:
    """What a Hive/DuckDB reader would take for data: no _ or . in any path part."""
    return [
        p
        for p in out.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(out).parts)
    ]


def assert_manifest_consistent(out: Path) -> set[str]:
    """Recorded files are whole, of the recorded size and rows, and hold their windows' rows.

    Returns the keys of the recorded files.
    """
    recorded = set()
    for part in partitions(out):
        files = part["files"]
        for f in files:  # type: ignore[attr-defined]
            path = out / f["key"]
            assert path.stat().st_size == f["size"], f["key"]
            assert pq.read_metadata(path).num_rows == f["rows"], f["key"]
            recorded.add(f["key"])
        for start, end, _, rows, _, _, held in part["windows"]:  # type: ignore[attr-defined]
            found = 0
            for i in held:
                table = pq.read_table(out / files[i]["key"], partitioning=None)  # type: ignore[index]
                stamps = table.column("timestamp").cast("int64").to_pylist()
                found += sum(1 for s in stamps if start * 1000 <= s < end * 1000)
            assert found == rows, (part["feed"], start)
    return recorded


def test_sigkill_at_random_moments_then_resume_is_exact(make_sim, tmp_path: Path) -> None:
    """Twelve SIGKILLs mid-run, then a final run: the lake equals an uninterrupted harvest."""
    server = make_sim(max_limit=10, dataset=DatasetSpec(seed=5, rows_per_day=90))
    reference = tmp_path / "reference"
    assert cli(run_args(server.url, reference)).returncode == 0

    out = tmp_path / "crashed"
    rng = random.Random(1234)
    kills = 0
    for _ in range(12):
        kills += kill_mid_run(run_args(server.url, out, *SLOW), lambda: manifest_count(out), rng)
        for path in visible_data(out):
            pq.read_table(path)  # a half-written visible file would fail here
        if (out / "_manifest").exists():
            assert_manifest_consistent(out)
    assert kills >= 10
    final = cli(run_args(server.url, out))
    assert final.returncode == 0, final.stderr
    truth = {f: server.dataset.truth(f, START, END, confidence=0, severity=0) for f in FEEDS}
    assert_lake_exact(str(out), truth)
    assert sorted(p.relative_to(out) for p in visible_data(out)) == sorted(
        p.relative_to(reference) for p in visible_data(reference)
    )
    # every data file is one the manifest records: a killed run's unrecorded file was
    # replaced by the run that finished its windows
    assert {p.relative_to(out).as_posix() for p in visible_data(out)} == (
        assert_manifest_consistent(out)
    )
    assert not [p for p in out.rglob(".*.tmp")], "staging leftovers were not cleaned up"
    assert not (out / "_staging").exists(), "a killed run's staging folder was not swept"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_rerun_finishes(make_sim, tmp_path: Path, signum: int) -> None:
    """SIGTERM/SIGINT: exit 130 with how to resume, a consistent manifest, then an exact rerun."""
    server = make_sim(max_limit=10, latency=0.02, dataset=DatasetSpec(seed=5, rows_per_day=90))
    out = tmp_path / "lake"
    process = start(run_args(server.url, out))
    deadline = time.monotonic() + 30
    while not (out / "_manifest").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert_manifest_consistent(out)
    assert not [p for p in out.rglob(".*.tmp")]
    final = cli(run_args(server.url, out))
    assert final.returncode == 0, final.stderr
    truth = {f: server.dataset.truth(f, START, END, confidence=0, severity=0) for f in FEEDS}
    assert_lake_exact(str(out), truth)


def test_sigkill_during_s3_uploads_then_resume_is_exact(
    make_sim, s3_bucket: tuple[str, str]
) -> None:
    """SIGKILLs while writing to S3: no partial object is ever visible, and a resume is exact."""
    import boto3

    from lakecheck import duckdb_for_s3

    endpoint, bucket = s3_bucket
    server = make_sim(max_limit=10, dataset=DatasetSpec(seed=5, rows_per_day=90))
    out = f"s3://{bucket}/crash"
    args = run_args(server.url, out, "--s3-endpoint-url", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)

    def entries() -> int:
        """Day files written so far: each commit adds some."""
        listed = client.list_objects_v2(Bucket=bucket, Prefix="crash/")
        return sum(1 for o in listed.get("Contents", []) if o["Key"].endswith(".parquet"))

    rng = random.Random(99)
    kills = 0
    try:
        for _ in range(10):
            kills += kill_mid_run([*args, *SLOW], entries, rng)
            listed = client.list_objects_v2(Bucket=bucket, Prefix="crash/").get("Contents", [])
            for obj in listed:
                if obj["Key"].endswith(".parquet"):
                    body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    pq.read_table(pa.BufferReader(body))  # whole, or not there at all
    finally:
        client.close()
    assert kills >= 8
    final = cli(args)
    assert final.returncode == 0, final.stderr
    truth = {f: server.dataset.truth(f, START, END, confidence=0, severity=0) for f in FEEDS}
    assert_lake_exact(out, truth, con=duckdb_for_s3(endpoint))
