"""How one client is measured: in a fresh process, against a simulator in another.

Every measurement runs one client -- the harvester, its Iceberg path
(``harvester-iceberg``: the same job with ``--table-format iceberg``), the ceiling
(:mod:`benchmarks.ceiling`), the dlt peer (:mod:`benchmarks.peer_dlt`), the naive
script (:mod:`benchmarks.naive`), or scenario f's nightly run (:mod:`benchmarks.nightly`)
-- in a new Python process (``python -m benchmarks.harness worker KIND JOB RESULT``).
The client times its own work (imports and interpreter start excluded) and reports its
rows; the parent takes the process's peak RSS and CPU from ``wait4`` and the requests
and 429s from the simulator's counters, reset before each client.
:func:`run_together` starts several such processes at once (the shards of one job)
and sums them into one measurement. :func:`run_tool` runs unmeasured work (reading a
lake back) in such a process, so that it counts in no measurement.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a worker process imports no simulator: it only talks to one
    from benchmarks.simproc import SimProcess
    from harvester.sim.data import DatasetSpec
    from harvester.sim.server import ServerOptions

REPO = Path(__file__).resolve().parent.parent
#: Where the workers import ``harvester`` and ``benchmarks`` from (see :func:`snapshot_code`).
CODE = {"root": REPO}
KEY = "bench-key-not-a-secret"
#: The harvester writing Iceberg tables (``--table-format iceberg``), in scenarios a and e.
ICEBERG = "harvester-iceberg"
#: Every client, in the order they are measured (the Hive harvester first: the others are
#: set beside it, and it renders the server's pages for its spans in its warm-up).
CLIENTS = ("harvester", ICEBERG, "ceiling", "dlt", "naive")
#: The harvester and its variants: they run wherever the harvester does, baselines or not.
HARVESTERS = ("harvester", ICEBERG)
#: What each optional client needs importable, and how to get it.
NEEDS = {"dlt": ("dlt", "pandas"), "naive": ("requests", "pandas"), ICEBERG: ("pyiceberg",)}
INSTALL_HINT = "pip install '.[bench]'"
INSTALL_HINTS = {ICEBERG: "pip install '.[iceberg]'"}
Log = Callable[[str], None]


@dataclass(kw_only=True)
class Measurement:
    """One client's run in one scenario."""

    client: str
    label: str = ""
    rows: int = 0
    seconds: float = 0.0
    requests: int = 0
    fewest: int | None = None
    """The fewest pages that hold the records this client was asked for."""
    throttled: int = 0
    peak_rss_mb: float = 0.0
    process_seconds: float = 0.0
    cpu_seconds: float = 0.0
    load: float = 0.0
    ok: bool = True
    skipped: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The client's name with its variant, e.g. ``harvester (1M rows)``."""
        return f"{self.client} ({self.label})" if self.label else self.client

    @property
    def rows_per_s(self) -> float:
        """Rows landed per second of the client's own work."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        """Requests the server saw per second of the client's work."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(kw_only=True)
class Check:
    """One target of the issue, what was measured against it, and whether it is met."""

    target: str
    measured: str
    met: bool | None


@dataclass(kw_only=True)
class ScenarioResult:
    """Everything a scenario measured, ready for the report."""

    key: str
    title: str
    setup: str
    measurements: list[Measurement] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    ratios: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    table: list[str] = field(default_factory=list)
    """Markdown lines shown instead of the usual client table (scenario f)."""

    def get(self, client: str, label: str = "") -> Measurement | None:
        """The measurement of ``client`` (with ``label``), if any ran."""
        for m in self.measurements:
            if m.client == client and (not label or m.label == label) and not m.skipped:
                return m
        return None


def snapshot_code(into: Path) -> Path:
    """Copy ``harvester/`` and ``benchmarks/`` into ``into`` and run every process from there.

    Others edit the same working tree while a run takes minutes; without a snapshot,
    clients measured later in the run would import newer code than earlier ones. The
    workers run with the snapshot as their working directory and first ``sys.path``
    entry; the simulator children (``spawn``) inherit ``sys.path`` from this process,
    so it is put first here too.
    """
    into.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.md")
    for package in ("harvester", "benchmarks"):
        shutil.copytree(REPO / package, into / package, ignore=ignore, dirs_exist_ok=True)
    CODE["root"] = into
    sys.path.insert(0, str(into))
    return into


def restore_code() -> None:
    """Undo :func:`snapshot_code`: import from the working tree again."""
    root = str(CODE["root"])
    if root in sys.path and CODE["root"] != REPO:
        sys.path.remove(root)
    CODE["root"] = REPO


def missing_modules(client: str) -> list[str]:
    """The modules ``client`` needs that are not installed."""
    return [m for m in NEEDS.get(client, ()) if importlib.util.find_spec(m) is None]


# ----------------------------------------------------------------------------------------
# The worker: one client in a fresh process.


def run_harvester_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run the real harvester in-process, as ``harvester run`` does, and time it.

    ``job["params"]`` are the query's filters (scores, ``ioc``) as the API spells them;
    ``job["harvester"]`` any further options of :func:`harvester.api.make_config`
    (``window``, ``shard``, ``limit``, ``table_format``: None keeps the harvester's
    default). The outcome names the lake (``out``) and the windows done per feed.
    """
    from harvester import api, logs

    params = job.get("params") or {}
    options: dict[str, Any] = {
        "after": job["after"],
        "before": job["before"],
        "out": job["out"],
        "base_url": job["url"],
        "feeds": ",".join(job["feeds"]),
        "confidence": int(params["confidence"]) if "confidence" in params else None,
        "severity": int(params["severity"]) if "severity" in params else None,
        "ioc": params.get("ioc"),
        "limit": job["limit"],
        "concurrency": job["concurrency"],
        "prefetch": job["prefetch"],
        "rate": job["rate"],
        **job.get("harvester", {}),
    }
    with open(job["log"], "w", encoding="utf-8") as stream:
        logs.configure(level="info", stream=stream, json=True)
        config = api.make_config(env={}, **options)
        started = time.perf_counter()
        result = api.harvest(config, api_key=job["key"])
        seconds = time.perf_counter() - started
    feeds = result.feeds.values()
    outcome = {
        "rows": sum(s.rows for s in feeds),
        "seconds": seconds,
        "ok": result.ok,
        "failures": [f"{f.feed} {f.window}: {f.reason}" for f in result.failures[:5]],
        "client_requests": sum(s.counters.requests for s in feeds),
        "client_throttled": sum(s.counters.throttled for s in feeds),
        "client_retries": sum(s.counters.retries for s in feeds),
        "client_pages": sum(s.pages for s in feeds),
        "windows": {name: s.done for name, s in result.feeds.items()},
        "out": job["out"],
    }
    if job.get("count_files"):
        outcome["day_files"] = day_files(Path(job["out"]))
    return outcome


def day_files(lake: Path) -> dict[str, list[int]]:
    """``{"feed/dt=YYYY-MM-DD": [data files, rows]}`` of a local lake (readers' view)."""
    import pyarrow.parquet as pq

    out: dict[str, list[int]] = {}
    for folder in sorted(lake.glob("*/dt=*")):
        files = [
            p
            for p in folder.iterdir()
            if p.suffix == ".parquet" and not p.name.startswith((".", "_"))
        ]
        rows = sum(pq.read_metadata(p).num_rows for p in files)
        out[f"{folder.parent.name}/{folder.name}"] = [len(files), rows]
    return out


def import_iceberg() -> None:
    """Import what the harvester's Iceberg path loads lazily (pyiceberg, its SQL catalog)."""
    import importlib

    for name in (
        "pyiceberg.catalog.sql",
        "pyiceberg.table",
        "pyiceberg.io.pyarrow",
        "pyiceberg.expressions",
        "pyiceberg.manifest",
        "harvester.iceberg.catalog",
        "harvester.iceberg.tables",
        "harvester.iceberg.commit",
        "harvester.iceberg.sink",
        "harvester.iceberg.hint",
        "harvester.iceberg.ancestry",
    ):
        importlib.import_module(name)


def _worker(kind: str, job_path: str, result_path: str) -> int:
    """``python -m benchmarks.harness worker KIND JOB RESULT``: run one client."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    if kind == "harvester":
        result = run_harvester_job(job)
    elif kind == ICEBERG:
        # The harvester's very job, written as Iceberg tables (the default SQLite catalog
        # at {out}/_catalog.db for a local lake). The harvester imports pyiceberg only when
        # it opens the tables, inside the timed work: imported here first, so that wall s
        # excludes imports for this client too (~1 s; process s still holds them).
        import_iceberg()
        options = {**job.get("harvester", {}), "table_format": "iceberg"}
        result = run_harvester_job({**job, "harvester": options})
    elif kind == "iceberg-inspect":
        from benchmarks import iceberg

        result = iceberg.inspect(job)
    elif kind == "ceiling":
        from benchmarks import ceiling

        result = ceiling.run_job(job)
    elif kind == "dlt":
        from benchmarks import peer_dlt

        result = peer_dlt.run_job(job)
    elif kind == "naive":
        from benchmarks import naive

        result = naive.run_job(job)
    elif kind == "lake":
        from benchmarks import nightly

        result = nightly.build_lakes(job)
    elif kind == "nightly":
        from benchmarks import nightly

        result = nightly.run_nightly_job(job)
    else:
        raise SystemExit(f"unknown client {kind!r}")
    result["self_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


class _Sampler:
    """Polls the simulator's counters in the background (for the sustained rate)."""

    def __init__(self, sim: SimProcess, interval: float = 0.25) -> None:
        self.sim, self.interval = sim, interval
        self.samples: list[tuple[float, int, int]] = []  # (t, answered 200, answered 429)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                stats = self.sim.stats()
                by = stats["by_status"]
                self.samples.append((time.monotonic(), by.get("200", 0), by.get("429", 0)))
            self._stop.wait(self.interval)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def timeline(self, step: float = 2.0) -> list[tuple[float, int, int]]:
        """``(seconds since the first request, 200s, 429s)`` per ``step`` seconds."""
        start = next((t for t, ok, limited in self.samples if ok + limited > 0), None)
        if start is None:
            return []
        out: list[tuple[float, int, int]] = []
        last_ok = last_limited = 0
        edge = start
        for t, ok, limited in self.samples:
            if t >= edge:
                out.append((round(edge - start, 1), ok - last_ok, limited - last_limited))
                last_ok, last_limited, edge = ok, limited, edge + step
        final = self.samples[-1]
        if final[1] > last_ok or final[2] > last_limited:
            out.append((round(edge - start, 1), final[1] - last_ok, final[2] - last_limited))
        return out

    def sustained(self, trim: float = 0.15) -> float | None:
        """200s per second from the first request to the last 200, ``trim`` cut at each end."""
        samples = self.samples
        if len(samples) < 4:
            return None
        final = samples[-1][1]
        start = next((t for t, ok, limited in samples if ok + limited > 0), None)
        end = next((t for t, ok, _ in samples if ok >= final), None)
        if start is None or end is None or end <= start:
            return None
        span = end - start
        inside = [s for s in samples if start + trim * span <= s[0] <= end - trim * span]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


@dataclass(kw_only=True)
class _Launched:
    """A worker process started, and where its result will be."""

    process: subprocess.Popen[bytes]
    run_dir: Path
    result_path: Path
    stderr: Any


def _worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker: ours plus ``env``, importing the measured code first."""
    base = {**os.environ, **(env or {})}
    return {
        **base,
        "PYTHONPATH": os.pathsep.join([str(CODE["root"]), base.get("PYTHONPATH", "")]),
    }


def _launch(
    kind: str, job: dict[str, Any], sim: SimProcess, run_dir: Path, env: dict[str, str] | None
) -> _Launched:
    """Write the job and start its worker (stdout and stderr to ``run_dir/stderr.txt``)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job = {
        "out": str(run_dir / "out"),
        **job,
        "url": sim.url,
        "key": KEY,
        "log": str(run_dir / "harvester.log"),
    }
    job_path, result_path = run_dir / "job.json", run_dir / "result.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    full_env = _worker_env(env)
    stderr = open(run_dir / "stderr.txt", "wb")  # noqa: SIM115 -- closed by _finish
    argv = [sys.executable, "-m", "benchmarks.harness", "worker", kind, str(job_path)]
    process = subprocess.Popen(
        [*argv, str(result_path)],
        cwd=CODE["root"],
        env=full_env,
        stdout=stderr,
        stderr=subprocess.STDOUT,
    )
    return _Launched(process=process, run_dir=run_dir, result_path=result_path, stderr=stderr)


def _finish(launched: _Launched, measurement: Measurement, timeout: float, log: Log) -> None:
    """Wait for the worker; fill ``measurement`` with its result and its rusage."""
    try:
        status, usage = _wait(launched.process, timeout)
    finally:
        launched.stderr.close()
    if usage is not None:
        measurement.peak_rss_mb = usage.ru_maxrss / 1024
        measurement.cpu_seconds = usage.ru_utime + usage.ru_stime
    run_dir, result_path = launched.run_dir, launched.result_path
    if status != 0 or not result_path.exists():
        measurement.ok = False
        tail = (run_dir / "stderr.txt").read_text(encoding="utf-8", errors="replace")[-1500:]
        measurement.note = (
            f"exit status {status}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
        )
        log(f"    {measurement.name}: FAILED ({measurement.note}); see {run_dir}/stderr.txt")
        return
    result = json.loads(result_path.read_text(encoding="utf-8"))
    measurement.rows = int(result["rows"])
    measurement.seconds = float(result["seconds"])
    measurement.ok = bool(result.get("ok", True))
    if not measurement.ok:
        measurement.note = "; ".join(result.get("failures", []))
    measurement.extra = {k: v for k, v in result.items() if k not in ("rows", "seconds", "ok")}


def _logged(measurement: Measurement, log: Log) -> Measurement:
    crashed = not measurement.ok and measurement.note.startswith("exit status")
    if not measurement.skipped and not crashed:
        fewest = "" if measurement.fewest is None else f" (fewest pages {measurement.fewest})"
        log(
            f"    {measurement.name}: {measurement.rows:,} rows in {measurement.seconds:.2f}s = "
            f"{measurement.rows_per_s:,.0f} rows/s, {measurement.requests} req{fewest} "
            f"({measurement.throttled} x 429), peak RSS {measurement.peak_rss_mb:.0f} MB"
        )
    return measurement


def run_client(
    kind: str,
    job: dict[str, Any],
    sim: SimProcess,
    workdir: Path,
    *,
    label: str = "",
    timeout: float,
    sample: bool = False,
    env: dict[str, str] | None = None,
    log: Log = print,
) -> Measurement:
    """Run one client in a fresh process against ``sim`` and measure it.

    ``job`` may name its own ``out`` (a lake to work on); otherwise the client writes
    into a fresh folder. ``env`` is added to the worker's environment.
    """
    measurement = Measurement(client=kind, label=label)
    missing = missing_modules(kind)
    if missing:
        hint = INSTALL_HINTS.get(kind, INSTALL_HINT)
        measurement.skipped = f"skipped: {', '.join(missing)} not installed ({hint})"
        log(f"    {measurement.name}: {measurement.skipped}")
        return measurement
    run_dir = workdir / f"{kind}-{label or 'run'}".replace(" ", "_").replace("/", "-")
    sim.reset_stats()
    measurement.load = os.getloadavg()[0]
    sampler = _Sampler(sim) if sample else None
    started = time.perf_counter()
    with sampler or contextlib.nullcontext():
        launched = _launch(kind, job, sim, run_dir, env)
        _finish(launched, measurement, timeout, log)
    measurement.process_seconds = time.perf_counter() - started
    stats = sim.stats()
    measurement.requests = int(stats["requests"])
    measurement.throttled = int(stats["by_status"].get("429", 0))
    if sampler is not None and measurement.ok:
        measurement.extra["sustained_ok_per_s"] = sampler.sustained()
        measurement.extra["timeline"] = sampler.timeline()
    return _logged(measurement, log)


def run_tool(kind: str, job: dict[str, Any], run_dir: Path, *, timeout: float) -> dict[str, Any]:
    """Run the worker ``kind`` once, unmeasured, and return its result.

    Work that must not count in a measurement (reading back a lake the client wrote)
    runs here, in its own process: inside the client's process it would add to its CPU
    and peak RSS. A failure is a :class:`RuntimeError` naming the last line of its output.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job_path, result_path = run_dir / "job.json", run_dir / "result.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    argv = [sys.executable, "-m", "benchmarks.harness", "worker", kind, str(job_path)]
    try:
        done = subprocess.run(
            [*argv, str(result_path)],
            cwd=CODE["root"],
            env=_worker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{kind} took more than {timeout:g}s") from exc
    (run_dir / "stderr.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0 or not result_path.exists():
        lines = (done.stdout + done.stderr).strip().splitlines()
        raise RuntimeError(
            f"{kind} exit status {done.returncode}: {lines[-1] if lines else ''} "
            f"(see {run_dir}/stderr.txt)"
        )
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def run_together(
    kind: str,
    jobs: Sequence[dict[str, Any]],
    sim: SimProcess,
    workdir: Path,
    *,
    label: str,
    timeout: float,
    log: Log = print,
) -> Measurement:
    """Run several workers of ``kind`` at once (the shards of one job) as one measurement.

    Rows and CPU are summed, wall time and process time are the slowest worker's, peak
    RSS the largest; requests are the server's count for all of them together. Each
    worker's own rows and seconds are kept in ``extra["parts"]``.
    """
    total = Measurement(client=kind, label=label)
    sim.reset_stats()
    total.load = os.getloadavg()[0]
    started = time.perf_counter()
    base = workdir / f"{kind}-{label}".replace(" ", "_").replace("/", "-")
    launched = [_launch(kind, job, sim, base / f"part-{i}", None) for i, job in enumerate(jobs)]
    parts = []
    for i, one in enumerate(launched):
        part = Measurement(client=kind, label=f"{label} part {i}")
        _finish(one, part, max(1.0, timeout - (time.perf_counter() - started)), log)
        parts.append(part)
    total.process_seconds = time.perf_counter() - started
    stats = sim.stats()
    total.requests = int(stats["requests"])
    total.throttled = int(stats["by_status"].get("429", 0))
    total.rows = sum(p.rows for p in parts)
    total.seconds = max(p.seconds for p in parts)
    total.cpu_seconds = sum(p.cpu_seconds for p in parts)
    total.peak_rss_mb = max(p.peak_rss_mb for p in parts)
    total.ok = all(p.ok for p in parts)
    total.note = "; ".join(p.note for p in parts if p.note)
    total.extra = {
        "parts": [
            {"rows": p.rows, "seconds": round(p.seconds, 2), "ok": p.ok, **p.extra} for p in parts
        ]
    }
    return _logged(total, log)


def _wait(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    """Wait for ``process`` with ``wait4`` (its own rusage); kill it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage
        if time.monotonic() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            return -9, usage
        time.sleep(0.05)


def feed_list(text: str) -> list[str]:
    """``all`` or a comma-separated list of feeds."""
    from harvester.schemas import FEEDS

    return list(FEEDS) if text == "all" else [f.strip() for f in text.split(",") if f.strip()]


def server_options(spec: DatasetSpec, **kwargs: Any) -> ServerOptions:
    """The simulator's options for ``spec``, with the suite's key."""
    from harvester.sim.server import ServerOptions

    return ServerOptions(api_key=KEY, dataset=spec, **kwargs)


def ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    """rows/s of ``a`` over rows/s of ``b``, when both ran and landed rows."""
    if a is None or b is None or not a.ok or not b.ok or b.rows_per_s <= 0:
        return None
    return a.rows_per_s / b.rows_per_s


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """``value`` formatted, or ``n/a``."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        sys.exit(_worker(sys.argv[2], sys.argv[3], sys.argv[4]))
    raise SystemExit("usage: python -m benchmarks.harness worker KIND JOB RESULT")
