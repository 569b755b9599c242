"""Scenario f's worker side: synthetic lakes of 1h windows, and a no-op nightly run measured.

:func:`build_lakes` writes lakes straight through the harvester's store interface, as
``tests/test_commit_protocol.py::synthetic_lake`` does: the manifest's month partitions
(every 1h window complete, each day's windows in one day file) and its head, built with
:mod:`harvester.manifest.model` and written where :mod:`harvester.manifest.io` reads
them, plus one run report a day under ``_runs/`` (a lake harvested nightly has them,
and a run must not read them all). No data file is written: a no-op run reads none.
Harvesting five years to get such a lake would take hours.

:func:`run_nightly_job` runs, in this process and through :func:`harvester.cli.main`
(the ``harvester`` console script), ``harvester run --since-last --before now --lag
1h`` as the nightly cron does, then ``harvester status``. The lake's store is wrapped
so that every call through the :class:`~harvester.storage.Store` interface is counted
(``read``, ``write``, ``commit``, ``delete``, ``list``, ``fetch``); on S3 the server's
own request counts (:mod:`benchmarks.s3proc`) are taken around each command too.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # the worker side imports none of the harness
    from benchmarks.harness import Log, ScenarioResult
    from benchmarks.sizes import Sizes

#: The store methods counted: every one that reaches the disk or the object store.
STORE_CALLS = ("read", "write", "commit", "delete", "list", "fetch")
STEP = 3600
DAY = 86_400


def lake_end(now: datetime | None = None) -> int:
    """Where a synthetic lake ends: the hour after the current one (epoch seconds).

    ``--before now --lag 1h`` stops at the last hour edge at or before now - 1h, so a
    lake that ends an hour past the current hour leaves a nightly run nothing to do for
    the next two hours, however long the scenario takes: the run always takes the
    up-to-date path, never a window of fresh work.
    """
    moment = int((now or datetime.now(UTC)).timestamp())
    return moment // STEP * STEP + STEP


def nightly_argv(job: dict[str, Any]) -> list[str]:
    """The nightly cron's command line for this job's lake (see the README's recipe)."""
    argv = [
        "run",
        "--since-last",
        "--before",
        "now",
        "--lag",
        "1h",
        "--out",
        job["out"],
        "--base-url",
        job["url"],
        "--feeds",
        ",".join(job["feeds"]),
        "--window",
        "1h",
        "--confidence",
        "0",
        "--severity",
        "0",
        "--no-progress",
    ]
    if job.get("s3"):
        argv += ["--s3-endpoint-url", job["s3"]]
    return argv


def status_argv(job: dict[str, Any]) -> list[str]:
    """``harvester status`` of this job's lake."""
    argv = ["status", "--out", job["out"]]
    if job.get("s3"):
        argv += ["--s3-endpoint-url", job["s3"]]
    return argv


def fingerprint(job: dict[str, Any]) -> str:
    """The query fingerprint the nightly run will look for in the manifest."""
    from harvester import api

    config = api.make_config(
        after="2020-01-01",
        before="2020-01-02",
        out=job["out"],
        base_url=job["url"],
        feeds=",".join(job["feeds"]),
        window="1h",
        confidence=0,
        severity=0,
        env={},
    )
    return config.query.fingerprint


async def _build(store: Any, *, feeds: list[str], days: int, end: int, fp: str) -> int:
    """Write one lake's partitions, head and run reports; return the objects written."""
    from harvester.intervals import Spans
    from harvester.lake.layout import main_key
    from harvester.manifest.io import HEAD_KEY, partition_key
    from harvester.manifest.model import (
        FileRecord,
        Head,
        Partition,
        WindowRecord,
        month_bounds,
        months_between,
    )

    first = end - days * DAY
    head = Head(table_format="hive", window=STEP)
    written = 0
    gate = asyncio.Semaphore(16)

    async def put(key: str, data: bytes) -> str:
        async with gate:
            info = await store.write(key, data)
        return str(info.version)

    for feed in feeds:
        parts = []
        for month in months_between(first, end):
            low, high = month_bounds(month)
            windows, files = [], []
            for day_start in range(max(first, low) // DAY * DAY, min(end, high), DAY):
                span = (max(day_start, first, low), min(day_start + DAY, end, high))
                day = datetime.fromtimestamp(day_start, UTC).date()
                key = main_key(feed, day)
                count = (span[1] - span[0]) // STEP
                files.append(
                    FileRecord(
                        key=key,
                        day=day.isoformat(),
                        size=2_000 + 150 * 3 * count,
                        version=f"synthetic-{day_start}",
                        rows=3 * count,
                        windows=Spans.one(*span),
                    )
                )
                windows += [
                    WindowRecord(
                        start=w,
                        end=w + STEP,
                        fingerprint=fp,
                        rows=3,
                        run_id=f"run-{day_start}",
                        completed_at=w + STEP,
                        files=(key,),
                    )
                    for w in range(*span, STEP)
                ]
            part = Partition(feed=feed, month=month)
            parts.append(part.with_changes(windows=windows, files=files))
        versions = await asyncio.gather(
            *(put(partition_key(feed, p.month), orjson.dumps(p.to_json())) for p in parts)
        )
        for part, version in zip(parts, versions, strict=True):
            head = head.with_partition(part, version)
        written += len(parts)
    reports = []
    for day_start in range(first // DAY * DAY, end, DAY):
        stamp = datetime.fromtimestamp(day_start + 2 * STEP, UTC)
        run_id = f"{stamp:%Y%m%dT%H%M%SZ}-synth"
        body = {
            "run_id": run_id,
            "started_at": f"{stamp:%Y-%m-%dT%H:%M:%SZ}",
            "ended_at": f"{stamp + timedelta(minutes=3):%Y-%m-%dT%H:%M:%SZ}",
            "feeds": {feed: {"windows": 24, "rows": 72} for feed in feeds},
            "failures": [],
        }
        reports.append(put(f"_runs/{run_id}.json", orjson.dumps(body)))
    await asyncio.gather(*reports)
    await store.write(HEAD_KEY, orjson.dumps(head.to_json()))
    return written + len(reports) + 1


def build_lakes(job: dict[str, Any]) -> dict[str, Any]:
    """Write every lake of ``job["lakes"]`` (``{"out", "days", "s3"}``); return what was written."""
    from harvester.storage import open_store

    fp = fingerprint({**job, "out": job["lakes"][0]["out"]})
    end = int(job["end"])
    built = []
    started = time.perf_counter()
    for lake in job["lakes"]:

        async def one(lake: dict[str, Any] = lake) -> int:
            store = open_store(lake["out"], s3_endpoint_url=lake.get("s3"))
            try:
                return await _build(
                    store, feeds=job["feeds"], days=int(lake["days"]), end=end, fp=fp
                )
            finally:
                await store.close()

        began = time.perf_counter()
        objects = asyncio.run(one())
        built.append(
            {"out": lake["out"], "objects": objects, "seconds": time.perf_counter() - began}
        )
    return {"rows": 0, "seconds": time.perf_counter() - started, "lakes": built}


def _counted(store: Any, counts: Counter[str]) -> Any:
    """``store`` with each call of :data:`STORE_CALLS` counted into ``counts``."""

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return counted

    for name in STORE_CALLS:
        setattr(store, name, wrap(name, getattr(store, name)))
    return store


def run_nightly_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run the nightly no-op and ``status`` on ``job["out"]``; time and count each."""
    import contextlib
    import io

    from benchmarks.s3proc import read_stats, reset_stats
    from harvester import api, cli

    counts: Counter[str] = Counter()
    opener = api.open_store
    api.open_store = lambda *a, **k: _counted(opener(*a, **k), counts)  # type: ignore[assignment]
    result: dict[str, Any] = {"rows": 0, "ok": True}
    total = 0.0
    for name, argv in (("nightly", nightly_argv(job)), ("status", status_argv(job))):
        counts.clear()
        if job.get("s3"):
            reset_stats(job["s3"])
        shown = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(shown):
            code = cli.main(argv)
        seconds = time.perf_counter() - started
        total += seconds
        result[name] = {
            "exit": code,
            "seconds": seconds,
            "store_calls": dict(counts),
            "s3": read_stats(job["s3"]) if job.get("s3") else {},
        }
        if code != 0:
            result["ok"] = False
            result["failures"] = [f"{name}: exit {code}"]
    result["seconds"] = total
    return result


# ----------------------------------------------------------------------------------------
# The scenario (in the parent process).

#: S3 requests a no-op run may make beyond the fixed 50, per feed ("a few per feed").
PER_FEED = 3
BUCKET = "bench-lake"


def _years(days: int) -> str:
    if days == 1:
        return "1 day"
    if days % 365 in (0, 1) and days >= 365:
        return f"{days // 365} year{'s' if days >= 730 else ''}"
    return f"{days} days"


def _s3_text(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not counts:
        return "0"
    return f"{total} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"


def _calls_text(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"


#: Seconds by which a no-op may differ between lakes and still be flat: one boto3 client set-up
#: (~0.2 s) and a busy machine move it by that much; a cost that grows with history is seconds.
NOISE_SECONDS = 0.25


def _flat(
    values: list[float], *, slack: float, noise: float = 0.0
) -> tuple[float | None, bool | None]:
    """The largest over the smallest, and whether it is within ``slack`` (or ``noise``)."""
    if len(values) < 2:
        return None, None
    low, high = min(values), max(values)
    growth = high / low if low > 0 else (1.0 if high == 0 else None)
    return growth, high <= max(slack * low, low + noise)


def scenario_f(sizes: Sizes, workdir: Path, clients: Sequence[str], log: Log) -> ScenarioResult:
    """A nightly run with nothing to do, and ``status``, on lakes of growing history.

    ``clients`` does not apply: only the harvester has a manifest to read.
    """
    import os

    from benchmarks.harness import (
        KEY,
        Check,
        Measurement,
        ScenarioResult,
        feed_list,
        run_client,
        server_options,
    )
    from benchmarks.s3proc import S3Process, client_env
    from benchmarks.simproc import SimProcess
    from harvester.sim.data import DatasetSpec

    feeds = feed_list(sizes.f_feeds)
    lengths = [int(x) for x in sizes.f_days.split(",") if x.strip()]
    stores = [s.strip() for s in sizes.f_stores.split(",") if s.strip()]
    root = workdir / "f"
    root.mkdir(parents=True, exist_ok=True)
    result = ScenarioResult(
        key="f",
        title="f. no-op nightly",
        setup=(
            f"synthetic lakes of {', '.join(_years(d) for d in lengths)} of 1h windows, "
            f"{len(feeds)} feeds, every window complete up to an hour past now (manifest "
            f"head, month partitions and a run report a day; no data files), "
            f"{' and '.join(stores)}; then `harvester run --since-last --before now --lag "
            f"1h` (the nightly cron's command) and `harvester status`, each in one process "
            f"through harvester.cli.main. S3 is moto in server mode in its own process, "
            f"counting every request it answers"
        ),
    )
    spec = DatasetSpec(seed=sizes.seed, rows_per_day=20, feeds=tuple(feeds))
    env = client_env(dict(os.environ), empty_config=str(root / "no-aws-config"))
    env["THREATGRID_API_KEY"] = KEY
    end = lake_end()
    rows: list[tuple[str, int, Measurement]] = []
    with SimProcess(server_options(spec)) as sim:
        s3 = S3Process() if "s3" in stores else None
        try:
            if s3 is not None:
                s3.start()
                s3.create_bucket(BUCKET)

            def endpoint(store: str) -> str | None:
                return s3.url if store == "s3" and s3 is not None else None

            def where(store: str, days: int) -> str:
                if store == "s3":
                    return f"s3://{BUCKET}/lake-{days}d"
                return str(root / "lakes" / f"{days}d")

            lakes = [
                {"out": where(store, d), "days": d, "s3": endpoint(store)}
                for store in stores
                for d in lengths
            ]
            built = run_client(
                "lake",
                {"lakes": lakes, "feeds": feeds, "end": end},
                sim,
                root,
                label="lakes",
                timeout=sizes.timeout,
                env=env,
                log=log,
            )
            if not built.ok:
                result.measurements.append(built)
                stores = []
            for lake in built.extra.get("lakes", []):
                took = f"{lake['objects']} objects, {lake['seconds']:.1f}s"
                log(f"    built {lake['out']}: {took}")
            for store in stores:

                def job(days: int, store: str = store) -> dict[str, Any]:
                    return {"out": where(store, days), "feeds": feeds, "s3": endpoint(store)}

                if sizes.warm_up:
                    # The first process against a store pays for cold caches (moto's, the
                    # page cache) that later ones do not: one unmeasured run first.
                    run_client(
                        "nightly",
                        job(lengths[0]),
                        sim,
                        root,
                        label=f"{store} warm-up",
                        timeout=sizes.timeout,
                        env=env,
                        log=log,
                    )
                for days in lengths:
                    runs = [
                        run_client(
                            "nightly",
                            job(days),
                            sim,
                            root,
                            label=f"{store}, {_years(days)}",
                            timeout=sizes.timeout,
                            env=env,
                            log=log,
                        )
                        for _ in range(max(1, sizes.repeat))
                    ]
                    best = min(runs, key=lambda m: (not m.ok, m.seconds))
                    result.measurements.append(best)
                    rows.append((store, days, best))
        finally:
            if s3 is not None:
                s3.stop()
    result.table = [
        "| store | lake | nightly s | nightly store calls | nightly S3 requests | status s | "
        "status store calls | status S3 requests | API requests | peak RSS MB | process s |",
        "|---|---|---:|---|---|---:|---|---|---:|---:|---:|",
    ]
    for store, days, m in rows:
        if not m.ok:
            result.table.append(f"| {store} | {_years(days)} | **FAILED** ({m.note[:200]}) |")
            continue
        n, s = m.extra["nightly"], m.extra["status"]
        result.table.append(
            f"| {store} | {_years(days)} | {n['seconds']:.2f} | {_calls_text(n['store_calls'])} "
            f"| {_s3_text(n['s3']) if store == 's3' else '-'} | {s['seconds']:.2f} | "
            f"{_calls_text(s['store_calls'])} | {_s3_text(s['s3']) if store == 's3' else '-'} | "
            f"{m.requests} | {m.peak_rss_mb:.0f} | {m.process_seconds:.1f} |"
        )
    for store in stores:
        done = [(d, m) for s, d, m in rows if s == store and m.ok]
        if len(done) < 2:
            continue
        for step in ("nightly", "status"):
            seconds = [m.extra[step]["seconds"] for _, m in done]
            growth, met = _flat(seconds, slack=1.25, noise=NOISE_SECONDS)
            result.checks.append(
                Check(
                    target=f"{store}: {step} seconds flat (largest <= 1.25 x smallest, or "
                    f"within {NOISE_SECONDS:g} s)",
                    measured=", ".join(
                        f"{_years(d)} {x:.2f} s" for (d, _), x in zip(done, seconds, strict=True)
                    )
                    + f" ({'n/a' if growth is None else f'{growth:.2f} x'})",
                    met=met,
                )
            )
            key = "s3" if store == "s3" else "store_calls"
            counts = [sum(m.extra[step][key].values()) for _, m in done]
            growth, met = _flat([float(c) for c in counts], slack=1.1)
            what = "S3 requests" if store == "s3" else "store calls"
            result.checks.append(
                Check(
                    target=f"{store}: {step} {what} flat (largest/smallest <= 1.1)",
                    measured=", ".join(
                        f"{_years(d)} {c}" for (d, _), c in zip(done, counts, strict=True)
                    ),
                    met=met,
                )
            )
            if store == "s3":
                cap = 50 + PER_FEED * len(feeds)
                result.checks.append(
                    Check(
                        target=f"s3: {step} <= 50 + {PER_FEED} per feed = {cap} requests",
                        measured=f"at most {max(counts)}",
                        met=max(counts) <= cap,
                    )
                )
    api = sum(m.requests for _, _, m in rows)
    result.notes.append(
        f"API requests of all the no-op runs together: {api} (a run with nothing to do "
        "should make none). Seconds are each command's own time inside the process "
        "(harvester.cli.main, imports of the modules it loads on first use included); "
        "process s covers interpreter start, both commands and exit. Store calls count "
        "read/write/commit/delete/list/fetch through the Store interface."
    )
    return result
