"""Overlapping runs on one lake: real processes, local disk and S3, exact lakes, honest exits.

Cron starts tonight's run while last night's is still going, a shard is started twice, a
``--force`` re-harvest runs beside the nightly job. Leases per (feed, month) keep two
runs from writing one block at once; a run that meets a live lease leaves that block to
its holder and, if the block is still not complete when it ends, exits 75 naming the
holder. The tests run real ``python -m harvester`` processes against the simulator
(slowed by ``latency``, so runs overlap for seconds) and check afterwards:

* each exit is 0, or 75 with a message naming the run that held the windows;
* the lake is exact (DuckDB reads exactly the simulator's records);
* every data object is one the manifest records, the head agrees with the partitions,
  every lease is released, and no staging folder or dot-file is left behind;
* no window was committed by both runs: the union of their ``window.done`` events
  covers the range, and their intersection is empty.

One test runs two harvests in this process instead, to hold one in the middle of a
group commit on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester import api
from harvester.config import HarvestConfig
from harvester.errors import IncompleteHarvest
from harvester.integrations import harvest_day, retryable
from harvester.intervals import Spans
from harvester.leases import Lease, Owner, _start_ticks, lease_key
from harvester.manifest.io import HEAD_KEY, Manifest
from harvester.orchestrator import Harvest
from harvester.report import RunResult
from harvester.secret import Secret
from harvester.sim.data import DatasetSpec
from harvester.storage import Expect, LocalStore, ObjectInfo, Store, open_store
from harvester.windows import format_api

from cli import SIM_KEY
from lakecheck import assert_lake_exact, duckdb_for_s3
from s3_server import admin_client

FEEDS = ["ips", "domains"]
HOUR = 3600
DAY = timedelta(days=1)
SHARD_VARS = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")


# --- running the real command ----------------------------------------------------------


@dataclass
class Run:
    """A ``python -m harvester run`` process; its output goes to files (no pipe fills up)."""

    popen: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float = 180) -> int:
        """Wait for the exit; return the exit code."""
        return self.popen.wait(timeout=timeout)

    def stderr(self) -> str:
        """What the process wrote on stderr (its JSON log lines and its last word)."""
        return self.log.with_suffix(".err").read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The structured log events (all, or those called ``name``)."""
        found = []
        for line in self.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:  # the last line of a run still writing it
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    @property
    def run_id(self) -> str:
        """The run's id, from its ``run.start`` event."""
        (started,) = self.events("run.start")
        return str(started["run_id"])

    def done(self) -> set[tuple[str, str]]:
        """(feed, window) of every window this run committed."""
        return {(e["feed"], e["window"]) for e in self.events("window.done")}

    def said(self) -> str:
        """The CLI's closing line(s): what a person reads."""
        return "\n".join(
            line for line in self.stderr().splitlines() if line.startswith("harvester:")
        )


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> Run:
    """Start ``python -m harvester ARGS`` now, with the simulator's key."""
    environ = {k: v for k, v in os.environ.items() if k not in SHARD_VARS}
    environ["THREATGRID_API_KEY"] = SIM_KEY
    environ.update(env or {})
    with log.with_suffix(".out").open("wb") as out, log.with_suffix(".err").open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "harvester", *args], env=environ, stdout=out, stderr=err
        )
    return Run(popen=popen, log=log)


def run_args(url: str, out: str, after: str, before: str, *extra: str) -> list[str]:
    """``harvester run`` of every record, 1h windows, a day a query, committing often.

    Flags in ``extra`` win over these (``--lease-ttl 600``, say).
    """
    return [
        "run",
        "--after",
        after,
        "--before",
        before,
        "--out",
        out,
        "--base-url",
        url,
        "--feeds",
        ",".join(FEEDS),
        "--confidence",
        "0",
        "--severity",
        "0",
        "--window",
        "1h",
        "--max-span",
        "1d",
        "--commit-every",
        "0.2",
        "--lease-ttl",  # renewed every 2 s, and finished blocks given back mid-run
        "6",
        "--concurrency",
        "2",
        "--rate",
        "1000",
        "--no-progress",
        *extra,
    ]


def slow_sim(make_sim: Callable[..., Any], latency: float = 0.05) -> Any:
    """A simulator whose pages take ``latency`` seconds: a day of a feed is ~12 pages."""
    return make_sim(
        max_limit=10, latency=latency, dataset=DatasetSpec(seed=11, rows_per_day=120)
    )


def wait_until(condition: Callable[[], bool], run: Run, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` while ``run`` is still going; fail if it never holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.popen.poll() is None, f"the run ended before {what}:\n{run.stderr()[-3000:]}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


# --- what must hold after overlapping runs ---------------------------------------------


def at(text: str) -> datetime:
    """An ISO date or instant, in UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def windows(after: datetime, before: datetime) -> set[tuple[str, str]]:
    """(feed, window) of every 1h window of ``[after, before)``, as ``window.done`` shows it."""
    out = set()
    moment = after
    while moment < before:
        end = moment + timedelta(hours=1)
        out |= {(f, f"[{format_api(moment)}, {format_api(end)})") for f in FEEDS}
        moment = end
    return out


def assert_honest(runs: list[Run], codes: list[int]) -> None:
    """Each run exited 0, or 75 naming another of the runs as the holder of its windows."""
    ids = {run.run_id for run in runs}
    for run, code in zip(runs, codes, strict=True):
        assert code in (0, 75), f"{run.log.name} exited {code}:\n{run.stderr()[-3000:]}"
        assert "Traceback" not in run.stderr()
        assert not run.events("window.failed"), run.log.name
        assert not run.events("lease.lost"), run.log.name
        if code == 75:
            said = run.said()
            assert "left to" in said, said
            assert any(other in said for other in ids - {run.run_id}), (
                f"{run.log.name} exited 75 without naming the run that held its windows: {said}"
            )
            assert run.events("span.held"), "a 75 without a span.held event"
        report = run.events("run.done")[-1]
        assert report["ok"] is (code == 0)


def assert_shared_fairly(runs: list[Run], expected: set[tuple[str, str]]) -> None:
    """The runs' committed windows cover ``expected`` and no window was committed twice."""
    done = [run.done() for run in runs]
    union: set[tuple[str, str]] = set().union(*done)
    assert union == expected, (
        f"{len(expected - union)} windows nobody committed, {len(union - expected)} unasked"
    )
    for i, mine in enumerate(done):
        for theirs in done[i + 1 :]:
            assert not mine & theirs, f"{len(mine & theirs)} windows committed by both runs"


async def _lake_state(
    out: str, endpoint: str | None
) -> tuple[dict[str, int], dict[tuple[str, str], Any], Any, dict[str, Lease]]:
    """Data objects (key -> size), partitions, the head and the leases of a lake."""
    store = open_store(out, s3_endpoint_url=endpoint)
    try:
        manifest = Manifest(store)
        objects = {i.key: i.size for i in await store.list("")}
        parts = {(v.part.feed, v.part.month): v for v in await manifest.all_partitions()}
        head, _ = await manifest.read_head()
        leases = {}
        for key in [k for k in objects if k.startswith("_leases/")]:
            blob = await store.read(key)
            assert blob is not None
            leases[key] = Lease.from_json(blob.data)
    finally:
        await store.close()
    data = {k: size for k, size in objects.items() if not k.startswith("_")}
    return data, parts, head, leases


def assert_lake_tidy(out: str, *, endpoint: str | None = None, staging: Path) -> None:
    """Every data object recorded at its size, the head true, leases released, no debris.

    ``staging`` is where the runs staged: ``{out}/_staging`` for a local lake, the
    ``TMPDIR`` given to the runs for an S3 lake.
    """
    data, parts, head, leases = asyncio.run(_lake_state(out, endpoint))
    recorded = {f.key: f.size for part in parts.values() for f in part.part.files.values()}
    assert data == recorded, (
        f"unrecorded objects {sorted(set(data) - set(recorded))[:3]}, "
        f"recorded but missing or another size {sorted(set(recorded) - set(data))[:3]}"
    )
    assert head is not None
    for feed in FEEDS:
        state = head.feed(feed)
        truth = Spans()
        for (f, month), current in parts.items():
            if f == feed:
                truth = truth | current.part.complete()
                if current.part.windows:
                    assert state.months[month].version == current.version, (feed, month)
        assert state.covered == truth, f"the head's {feed} windows differ from the partitions"
    assert leases, "no lease was ever taken"
    for key, lease in leases.items():
        assert lease.released, f"{key} is still held by {lease.owner}"
    if not out.startswith("s3://"):
        debris = list(Path(out).rglob(".*"))
        assert not debris, f"dot-files left behind: {debris[:3]}"
    leftovers = [p for p in staging.rglob("*")] if staging.exists() else []
    assert not leftovers, f"staging leftovers: {leftovers[:3]}"


def truth(server: Any, after: datetime, before: datetime) -> dict[str, list[dict[str, Any]]]:
    """What the simulator holds for ``[after, before)``, every score."""
    return {f: server.dataset.truth(f, after, before, confidence=0, severity=0) for f in FEEDS}


def day_files(out: str, endpoint: str | None) -> int:
    """Data files written so far."""
    if endpoint is None:
        return len(list(Path(out).glob("*/dt=*/*.parquet")))
    bucket, _, prefix = out.removeprefix("s3://").partition("/")
    with admin_client(endpoint) as client:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    return sum(1 for o in listed.get("Contents", []) if o["Key"].endswith(".parquet"))


@dataclass(frozen=True)
class Lake:
    """Where the runs write: a local folder, or a bucket prefix on the S3 server."""

    out: str
    endpoint: str | None
    staging: Path
    env: dict[str, str]

    def args(self) -> list[str]:
        """Extra flags for this lake."""
        return ["--s3-endpoint-url", self.endpoint] if self.endpoint else []

    def exact(self, expected: dict[str, list[dict[str, Any]]]) -> None:
        """DuckDB reads exactly ``expected``."""
        con = duckdb_for_s3(self.endpoint) if self.endpoint else None
        assert_lake_exact(self.out, expected, con=con)

    def tidy(self) -> None:
        """See :func:`assert_lake_tidy`."""
        assert_lake_tidy(self.out, endpoint=self.endpoint, staging=self.staging)


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    """A fresh lake on local disk, or on the S3 server (its runs stage in their own TMPDIR)."""
    if request.param == "local":
        out = tmp_path / "lake"
        yield Lake(out=str(out), endpoint=None, staging=out / "_staging", env={})
        return
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield Lake(
        out=f"s3://{bucket}/lake",
        endpoint=endpoint,
        staging=tmp / "harvester-staging",
        env={"TMPDIR": str(tmp)},
    )


# --- 1. cron overlapping itself ----------------------------------------------------------


@pytest.mark.slow
def test_two_identical_runs_started_together_share_the_work(
    make_sim: Callable[..., Any], lake: Lake, tmp_path: Path
) -> None:
    """Two identical runs at once: honest exits, exact lake, each window committed once."""
    server = slow_sim(make_sim)
    after, before = "2024-01-28", "2024-02-03"  # two months: two blocks per feed
    args = run_args(server.url, lake.out, after, before, *lake.args())
    runs = [start(args, tmp_path / f"run-{i}.log", lake.env) for i in range(2)]
    codes = [run.wait() for run in runs]

    assert_honest(runs, codes)
    assert 0 in codes, "the run that finished last saw every window complete"
    lake.exact(truth(server, at(after), at(before)))
    lake.tidy()
    assert_shared_fairly(runs, windows(at(after), at(before)))


# --- 2. a second run starts while the first is writing ---------------------------------


@pytest.mark.slow
def test_a_run_started_mid_write_does_its_own_part_and_leaves_the_held_blocks(
    make_sim: Callable[..., Any], lake: Lake, tmp_path: Path
) -> None:
    """A run started while another writes does only its own part and leaves the rest honestly.

    The second run, over a range that overlaps the first's and goes further, starts once
    the first has written day files: it harvests only February (which only it planned),
    leaves January to the first run and says so; the first run is not disturbed.
    """
    server = slow_sim(make_sim, latency=0.08)
    first_range = ("2024-01-26", "2024-02-01")  # January: one block per feed
    second_range = ("2024-01-29", "2024-02-03")  # the end of January, and February
    first = start(
        run_args(server.url, lake.out, *first_range, *lake.args()), tmp_path / "first.log", lake.env
    )
    wait_until(lambda: day_files(lake.out, lake.endpoint) >= 2, first, "the first day files")
    second = start(
        run_args(server.url, lake.out, *second_range, *lake.args()),
        tmp_path / "second.log",
        lake.env,
    )
    codes = [first.wait(), second.wait()]

    assert codes[0] == 0, first.stderr()[-3000:]
    assert_honest([first, second], codes)
    held = second.events("span.held")
    assert held, "the second run never met the first run's leases"
    assert {(e["feed"], e["month"]) for e in held} <= {(f, "2024-01") for f in FEEDS}
    assert all(first.run_id in e["holder"] for e in held)
    lake.exact(truth(server, at(first_range[0]), at(second_range[1])))
    lake.tidy()
    whole = windows(at(first_range[0]), at(second_range[1]))
    assert_shared_fairly([first, second], whole)
    assert first.done() == windows(at(first_range[0]), at(first_range[1]))
    assert second.done() == windows(at(first_range[1]), at(second_range[1]))


# --- 4. the nightly run beside a --force re-harvest --------------------------------------


def reports(out: Path) -> dict[str, dict[str, Any]]:
    """The run reports of a local lake, by run id."""
    found = [json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")]
    return {r["run_id"]: r for r in found}


@pytest.mark.slow
@pytest.mark.parametrize("first", ["force", "nightly"])
def test_nightly_beside_a_force_reharvest_keeps_both_runs_rows(
    make_sim: Callable[..., Any], tmp_path: Path, first: str
) -> None:
    """A nightly run and a --force re-harvest at once never drop each other's rows.

    `--since-last --before now --lag 1h` beside `--force` over the last three days, after
    records arrived late in the days harvested before. Afterwards each window holds
    exactly what the run that recorded it saw: the late records wherever the force run
    (or the nightly) recorded the window, none where the earlier harvest still stands (a
    block the other run held). The run that exited 75 is run again, as its message says,
    and then the lake is exactly the simulator's. Either run starts first, the other once
    the first holds a lease.
    """
    server = slow_sim(make_sim)
    out = tmp_path / "lake"
    lag = timedelta(hours=1)
    edge = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - lag
    seeded_from, nightly_from = edge - 3 * DAY, edge - 2 * DAY
    seed = start(
        run_args(server.url, str(out), format_api(seeded_from), format_api(nightly_from)),
        tmp_path / "seed.log",
    )
    assert seed.wait() == 0, seed.stderr()[-3000:]
    late = {  # records that arrive after they were harvested: --force's reason to be
        feed: {key(i) for i in server.dataset.add_records(feed, (seeded_from, nightly_from), 40)}
        for feed in FEEDS
    }

    force = run_args(server.url, str(out), format_api(seeded_from), "now", "--lag", "1h")
    nightly = [a for a in force if a not in ("--after", format_api(seeded_from))]
    commands = {"force": [*force, "--force"], "nightly": [*nightly, "--since-last"]}
    second = "nightly" if first == "force" else "force"
    runs = [start(commands[first], tmp_path / f"{first}.log")]
    wait_until(lambda: holds_lease(out, runs[0]), runs[0], f"the {first} run take a lease")
    runs.append(start(commands[second], tmp_path / f"{second}.log"))
    codes = [run.wait() for run in runs]
    (started,), (ended_first,) = runs[1].events("run.start"), runs[0].events("run.done")
    assert started["timestamp"] < ended_first["timestamp"], (
        f"the {first} run ended before the {second} run started: they did not overlap"
    )

    assert_honest(runs, codes)
    ended = max(at(r["parameters"]["before"]) for r in reports(out).values())
    assert ended >= edge
    _, parts, _, _ = asyncio.run(_lake_state(str(out), None))
    recorder = {
        (feed, w.start): w.run_id
        for (feed, _), current in parts.items()
        for w in current.part.windows.values()
    }
    assert set(recorder.values()) <= {seed.run_id, *(run.run_id for run in runs)}
    seen = {  # what each window's harvest saw: no late record where the seed run's stands
        feed: [
            item
            for item in items
            if key(item) not in late[feed]
            or recorder[(feed, hour_of(item))] != seed.run_id
        ]
        for feed, items in truth(server, seeded_from, ended).items()
    }
    assert_lake_exact(str(out), seen)
    lake = Lake(out=str(out), endpoint=None, staging=out / "_staging", env={})
    lake.tidy()
    assert not runs[0].done() & runs[1].done(), "a window committed by both runs"

    agains = []
    for run, code in zip(runs, codes, strict=True):
        if code == 75:  # "run the same command again once it has finished"
            args = run.popen.args[3:]  # type: ignore[index]
            agains.append(start(args, tmp_path / f"again-{run.log.stem}.log"))
            assert agains[-1].wait() == 0, agains[-1].stderr()[-3000:]
    ended = max(at(r["parameters"]["before"]) for r in reports(out).values())
    lake.exact(truth(server, seeded_from, ended))
    lake.tidy()
    done = set().union(*(run.done() for run in [*runs, *agains]))
    assert done == windows(seeded_from, ended)


def holds_lease(out: Path, run: Run) -> bool:
    """Whether ``run`` holds a lease in the local lake at ``out`` now."""
    started = run.events("run.start")
    for path in (out / "_leases").glob("*/*.json"):
        with contextlib.suppress(OSError, ValueError):  # being replaced right now
            lease = Lease.from_json(path.read_bytes())
            if started and lease.owner.run_id == started[0]["run_id"] and not lease.released:
                return True
    return False


def key(item: dict[str, Any]) -> bytes:
    """An API item, comparable."""
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def hour_of(item: dict[str, Any]) -> int:
    """The start of the 1h window an API item belongs to."""
    return int(at(item["timestamp"]).timestamp()) // HOUR * HOUR


# --- 5. leases of dead runs, and of runs on other hosts ----------------------------------


@pytest.mark.slow
def test_a_killed_runs_leases_are_taken_at_once_by_the_next_run(
    make_sim: Callable[..., Any], lake: Lake, tmp_path: Path
) -> None:
    """The next run on the host takes a killed run's leases at once, not after their TTL.

    SIGKILL a run mid-write (its leases would live 10 more minutes), then run again: the
    new run takes the dead owner's leases, sweeps its staging folder, and ends exact.
    """
    server = slow_sim(make_sim)
    after, before = "2024-01-29", "2024-02-03"
    args = run_args(server.url, lake.out, after, before, *lake.args(), "--lease-ttl", "600")
    victim = start(args, tmp_path / "victim.log", lake.env)
    wait_until(lambda: day_files(lake.out, lake.endpoint) >= 2, victim, "the first day files")
    victim.popen.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    _, _, _, leases = asyncio.run(_lake_state(lake.out, lake.endpoint))
    dead = [k for k, lease in leases.items() if lease.owner.run_id == victim.run_id]
    assert dead and not any(leases[k].released for k in dead), "the victim held no lease"
    assert lake.staging.exists() and any(lake.staging.iterdir()), "the victim staged nothing"

    rerun = start(args, tmp_path / "rerun.log", lake.env)
    assert rerun.wait() == 0, rerun.stderr()[-3000:]
    assert not rerun.events("span.held")
    taken = rerun.events("lease.taken_over")
    assert {lease_key(e["feed"], e["month"]) for e in taken} >= set(dead)
    assert all(e["why"] == "owner gone" and victim.run_id in e["holder"] for e in taken)
    lake.exact(truth(server, at(after), at(before)))
    lake.tidy()


def write_lease(out: Path, feed: str, month: str, *, expires: float, host: str) -> Owner:
    """A lease of ``(feed, month)`` written by hand, held by a run on ``host``."""
    owner = Owner(run_id="20240101T000000Z-far0ff", host=host, pid=4242, started=None)
    path = out / lease_key(feed, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Lease(owner=owner, token=7, expires=expires).to_json())
    return owner


def test_a_live_lease_of_another_host_is_respected_and_an_expired_one_taken(
    sim: Any, tmp_path: Path
) -> None:
    """Another host's live lease is respected (exit 75 naming it); an expired one is taken.

    Once the lease has expired, the next run takes it over (token 8) and completes the lake.
    """
    out = tmp_path / "lake"
    after, before = "2024-01-30", "2024-02-02"
    far = write_lease(out, "ips", "2024-01", expires=time.time() + 3600, host="harvester-far")
    args = run_args(sim.url, str(out), after, before)

    first = start(args, tmp_path / "first.log")
    assert first.wait() == 75, first.stderr()[-3000:]
    assert str(far) in first.said(), first.said()
    assert "run the same command again" in first.said()
    assert {(e["feed"], e["month"]) for e in first.events("span.held")} == {("ips", "2024-01")}
    partial = truth(sim, at(after), at(before))
    partial["ips"] = [i for i in partial["ips"] if i["timestamp"] >= "2024-02-01"]
    assert_lake_exact(str(out), partial)
    held = Lease.from_json((out / lease_key("ips", "2024-01")).read_bytes())
    assert (held.owner, held.token, held.released) == (far, 7, False)  # untouched

    write_lease(out, "ips", "2024-01", expires=time.time() - 1, host="harvester-far")
    second = start(args, tmp_path / "second.log")
    assert second.wait() == 0, second.stderr()[-3000:]
    (taken,) = second.events("lease.taken_over")
    assert (taken["feed"], taken["month"], taken["why"]) == ("ips", "2024-01", "expired")
    assert taken["token"] == 8 and str(far) == taken["holder"]
    assert_lake_exact(str(out), truth(sim, at(after), at(before)))
    assert_lake_tidy(str(out), staging=out / "_staging")


# --- 6. staging folders and dot-files: a live run's are never touched -------------------


def gone_pid() -> int:
    """The id of a process of this host that has just ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stage_folder(root: Path, run_id: str, owner: Owner, *, age: float = 0.0) -> Path:
    """A staging folder as a run leaves it: its owner file and a spool."""
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "ips-1-abcd.arrow").write_bytes(b"spooled rows")
    marker = folder / "owner.json"
    marker.write_bytes(orjson.dumps(dataclasses.asdict(owner)))
    if age:
        past = time.time() - age
        os.utime(marker, (past, past))
        os.utime(folder, (past, past))
    return folder


def test_staging_of_live_runs_is_kept_and_of_dead_runs_swept(
    sim: Any, lake: Lake, tmp_path: Path
) -> None:
    """A run sweeps dead runs' staging and never touches a live run's.

    Swept: the staging folders (and, locally, the dot-files beside small objects) of dead
    processes of this host, and folders of other hosts' runs silent for long. Kept whole:
    those of live processes, and of other hosts' runs recently alive.
    """
    host = socket.gethostname()
    live = subprocess.Popen(["sleep", "120"])  # a real, live process of this host
    try:
        live_owner = Owner(run_id="live", host=host, pid=live.pid, started=_start_ticks(live.pid))
        dead_pid = gone_pid()
        dead_owner = Owner(run_id="dead", host=host, pid=dead_pid, started=None)
        far = Owner(run_id="far", host="harvester-far", pid=4242, started=None)
        keep = [
            stage_folder(lake.staging, "live", live_owner),
            stage_folder(lake.staging, "far-recent", far),
        ]
        swept = [
            stage_folder(lake.staging, "dead", dead_owner),
            stage_folder(lake.staging, "far-silent", far, age=2 * 3600),
        ]
        dots: dict[bool, Path] = {}
        if lake.endpoint is None:
            head = Path(lake.out) / "_manifest" / "_head.json"
            head.parent.mkdir(parents=True)
            mark = host.replace(".", "_")
            for alive, pid in ((True, live.pid), (False, dead_pid)):
                dots[alive] = head.with_name(f".{head.name}.{mark}.{pid}.0123abcd.tmp")
                dots[alive].write_bytes(b"{half a head")

        args = run_args(sim.url, lake.out, "2024-01-01", "2024-01-03", *lake.args())
        run = start(args, tmp_path / "run.log", lake.env)
        assert run.wait() == 0, run.stderr()[-3000:]

        for folder in keep:
            assert sorted(p.name for p in folder.iterdir()) == ["ips-1-abcd.arrow", "owner.json"]
        for folder in swept:
            assert not folder.exists(), f"{folder.name} was not swept"
        assert sorted(p.name for p in lake.staging.iterdir()) == ["far-recent", "live"]
        if dots:
            assert dots[True].read_bytes() == b"{half a head"
            assert not dots[False].exists()
        lake.exact(truth(sim, at("2024-01-01"), at("2024-01-03")))
    finally:
        live.kill()
        live.wait()


# --- the head tells the truth while leases change hands mid-run ---------------------------


class HeldHead(LocalStore):
    """A local lake whose first head write after a partition write waits for :attr:`go`.

    That holds a run in the middle of a group commit: its partition is written, the head
    not yet, which is when its lease keeper must not give the block away.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.partition_written = asyncio.Event()
        self.go = asyncio.Event()

    # A group of writes goes through write() one by one, so that the hook sees them.
    write_many = Store.write_many

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        """Write ``key``; a head write waits for :attr:`go` once a partition is written."""
        if key == HEAD_KEY and self.partition_written.is_set():
            await self.go.wait()
        info = await super().write(key, data, expect=expect)
        if key.startswith("_manifest/ips/"):
            self.partition_written.set()
        return info


def test_a_block_is_given_away_only_after_the_head_records_it(sim: Any, tmp_path: Path) -> None:
    """A run's lease keeper never releases a block between its partition and head writes.

    Released there, another run could take the block, commit it and write the head, and
    then the first run's late head write would put back its older view of that month:
    `status` and `--since-last` would miss the other run's windows.
    """
    out = tmp_path / "lake"

    def config(after: str, before: str) -> HarvestConfig:
        return api.make_config(
            env={},
            after=after,
            before=before,
            out=str(out),
            base_url=sim.url,
            feeds="ips",
            confidence=0,
            severity=0,
            commit_every=0.05,
            lease_ttl=0.6,  # the keeper looks every 0.2 s
        )

    async def scenario() -> tuple[RunResult, RunResult]:
        held = HeldHead(out)
        first = Harvest(config("2024-01-29", "2024-01-30"), api_key=Secret(SIM_KEY), store=held)
        running = asyncio.create_task(first.execute())
        await asyncio.wait_for(held.partition_written.wait(), 60)  # fail, never hang
        for _ in range(10):  # time for the keeper to give the finished block away, if it would
            await asyncio.sleep(0.1)
            lease = Lease.from_json((out / lease_key("ips", "2024-01")).read_bytes())
            if lease.released:
                break
        second = Harvest(
            config("2024-01-30", "2024-01-31"), api_key=Secret(SIM_KEY), store=LocalStore(out)
        )
        later = await second.execute()
        held.go.set()
        return await running, later

    first, second = asyncio.run(scenario())
    _, parts, head, _ = asyncio.run(_lake_state(str(out), None))
    assert head is not None
    assert head.feed("ips").covered == parts[("ips", "2024-01")].part.complete()
    assert first.ok
    holder = f"run {first.run_id} (pid {os.getpid()} on {socket.gethostname()})"
    assert (second.held, second.held_by) == (1, [holder])


def test_a_scheduler_task_meeting_a_held_month_is_retried_with_the_holder_named(
    sim: Any, tmp_path: Path
) -> None:
    """`harvest_day` over a month another run holds raises IncompleteHarvest naming it.

    Airflow and Dagster retry the task on it; the retry after the lease lapsed finishes.
    """
    out = tmp_path / "lake"
    far = write_lease(out, "ips", "2024-01", expires=time.time() + 3600, host="harvester-far")
    options = {"out": str(out), "base_url": sim.url, "feeds": "ips,domains", "window": "1h"}
    with pytest.raises(IncompleteHarvest) as caught:
        harvest_day("2024-01-02", api_key=SIM_KEY, **options, confidence=0, severity=0)
    assert f"24 window(s) left to the run holding their lease, {far}" in str(caught.value)
    assert retryable(caught.value)
    assert caught.value.outcome["result"]["held_by"] == [str(far)]

    write_lease(out, "ips", "2024-01", expires=time.time() - 1, host="harvester-far")
    outcome = harvest_day("2024-01-02", api_key=SIM_KEY, **options, confidence=0, severity=0)
    assert outcome["result"]["ok"]
    assert_lake_exact(str(out), truth(sim, at("2024-01-02"), at("2024-01-03")))
