"""``python -m benchmarks.run``: run the scenarios and write the Markdown report.

    python -m benchmarks.run --out benchmarks/RESULTS.md      # the full suite (make bench)
    python -m benchmarks.run --smoke                          # seconds; proves the harness works
    python -m benchmarks.run --only a,d --set a_days=4        # a subset, resized
    python -m benchmarks.run --only a,e --set repeat=1        # with the Iceberg path beside

``--smoke`` runs every scenario once on tiny data (two at a time, every client in at
least one) and writes nothing unless ``--out`` is given; clients whose dependencies are
missing (dlt, pandas, requests) are skipped with a note. No run asserts a speed: the
report states each target, the measured value and whether it was met.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import (
    CLIENTS,
    REPO,
    Measurement,
    ScenarioResult,
    restore_code,
    snapshot_code,
)
from benchmarks.scenarios import SCENARIOS, run_scenarios
from benchmarks.sizes import SMOKE, Sizes

LIBRARIES = (
    "threatgrid-harvester",
    "aiohttp",
    "orjson",
    "pyarrow",
    "structlog",
    "tenacity",
    "dlt",
    "pandas",
    "requests",
    "psutil",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def _sources_digest(root: Path = REPO) -> str:
    """A short hash of every ``harvester/*.py`` under ``root``."""
    digest = hashlib.sha256()
    for path in sorted((root / "harvester").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _filesystem(path: str) -> str:
    try:
        out = subprocess.run(
            ["df", "-T", path], capture_output=True, text=True, check=False, timeout=10
        ).stdout.splitlines()
        return out[1].split()[1] if len(out) > 1 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine() -> list[tuple[str, str]]:
    """A description of the machine and software the numbers were measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [
        ("CPU", _cpu_model()),
        ("cores (os.cpu_count)", str(os.cpu_count())),
        ("memory", _memory_gb()),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("temp file system", _filesystem(tempfile.gettempdir())),
        ("load average at start (1/5/15 min)", " / ".join(f"{x:.2f}" for x in load)),
        ("git", _git()),
        ("harvester/ sources (sha256)", _sources_digest()),
        *((name, _version(name)) for name in LIBRARIES),
    ]


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def _row(m: Measurement) -> str:
    if m.skipped:
        return f"| {m.name} | {m.skipped} | | | | | | | | | | |"
    status = "" if m.ok else " **FAILED**"
    note = f" ({m.note[:200]})" if m.note else ""
    fewest = "" if m.fewest is None else f"{m.fewest:,}"
    return (
        f"| {m.name}{status}{note} | {m.rows:,} | {m.seconds:.2f} | {m.rows_per_s:,.0f} | "
        f"{m.requests:,} | {fewest} | {m.requests_per_s:,.1f} | {m.throttled:,} | "
        f"{_mb(m.peak_rss_mb)} | {m.cpu_seconds:.1f} | {m.process_seconds:.1f} | {m.load:.1f} |"
    )


def _met(value: bool | None) -> str:
    return "-" if value is None else ("met" if value else "**missed**")


def render(
    results: Sequence[ScenarioResult],
    sizes: Sizes,
    *,
    smoke: bool,
    started: datetime,
    seconds: float,
    about: list[tuple[str, str]],
) -> str:
    """The report as Markdown."""
    lines = [
        "# Benchmark results" + (" (smoke run: tiny data, numbers mean nothing)" if smoke else ""),
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `python -m benchmarks.run"
        f"{' --smoke' if smoke else ''}`; the whole run took {seconds / 60:.1f} min. "
        "See `benchmarks/README.md` for what each number means. The machine is shared and "
        "noisy: treat differences under ~15% as noise.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in about),
        "",
        "## Targets",
        "",
        "| scenario | target | measured | |",
        "|---|---|---|---|",
    ]
    for r in results:
        for check in r.checks:
            lines.append(f"| {r.title} | {check.target} | {check.measured} | {_met(check.met)} |")
    lines += [
        "",
        "## Ratios (rows/s of the harvester / rows/s of the other client, same run)",
        "",
        "| scenario | harvester/ceiling | harvester/peer (dlt) | harvester/naive |",
        "|---|---|---|---|",
    ]
    for r in results:
        cells = [
            r.ratios.get(k) for k in ("harvester/ceiling", "harvester/peer", "harvester/naive")
        ]
        lines.append(
            f"| {r.title} | " + " | ".join("n/a" if c is None else f"{c:.2f}" for c in cells) + " |"
        )
    lines += ["", "## Scenarios", ""]
    for r in results:
        lines += [f"### {r.title}", "", r.setup.rstrip(".") + ".", ""]
        if r.table:
            lines += [*r.table, ""]
        else:
            lines += [
                "| client | rows | wall s | rows/s | requests | fewest pages | req/s | 429s | "
                "peak RSS MB | CPU s | process s | load |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                *(_row(m) for m in r.measurements),
                "",
            ]
        extra = {
            k: v
            for k, v in r.ratios.items()
            if k not in ("harvester/ceiling", "harvester/peer", "harvester/naive")
        }
        if extra:
            lines.append(
                "Also: "
                + "; ".join(f"{k} = {'n/a' if v is None else f'{v:.2f}'}" for k, v in extra.items())
                + "."
            )
            lines.append("")
        sustained = [
            (m.name, m.extra.get("sustained_ok_per_s"))
            for m in r.measurements
            if "sustained_ok_per_s" in m.extra
        ]
        if sustained:
            lines.append(
                "Sustained successful requests/s (middle 70% of each run, sampled from the "
                "simulator every 0.25 s): "
                + ", ".join(f"{name} {'n/a' if v is None else f'{v:.1f}'}" for name, v in sustained)
                + "."
            )
            lines.append("")
        for note in r.notes:
            lines += [note, ""]
    lines += [
        "## Settings",
        "",
        "Every knob (`--set NAME=VALUE` changes one):",
        "",
        "```",
        *(f"{k} = {v!r}" for k, v in vars(sizes).items()),
        "```",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny data, every scenario once (seconds)"
    )
    parser.add_argument("--out", metavar="FILE", help="write the Markdown report here")
    parser.add_argument(
        "--only",
        metavar="a,b,...",
        default=",".join(SCENARIOS),
        help="scenarios to run (default all)",
    )
    parser.add_argument(
        "--clients",
        metavar="NAMES",
        default=",".join(CLIENTS),
        help=f"clients to measure (default {','.join(CLIENTS)})",
    )
    parser.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="override one size/knob (see the report's Settings)",
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import the working tree as it is (default: a copy taken at the start)",
    )
    parser.add_argument(
        "--workdir", metavar="DIR", help="keep lakes and logs here instead of a removed temp folder"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, or 2 on bad arguments, 1 if a client failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    asked = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [k for k in keys if k not in SCENARIOS] + [c for c in asked if c not in CLIENTS]
    if unknown or "harvester" not in asked:
        parser.error(f"unknown scenario/client {unknown} (the harvester is always measured)")
    clients = [c for c in CLIENTS if c in asked]  # measured in CLIENTS' order
    try:
        sizes = (SMOKE if args.smoke else Sizes()).with_overrides(args.set)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))

    def log(message: str) -> None:
        print(message, flush=True)

    started, clock = datetime.now(UTC), time.perf_counter()
    workdir = Path(args.workdir).resolve() if args.workdir else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    snapshot = None
    with contextlib.ExitStack() as cleanup:
        if not args.no_snapshot:
            base = workdir or Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
            snapshot = snapshot_code(base / "code")
            cleanup.callback(restore_code)
        about = machine()
        about.append(
            (
                "code measured",
                f"snapshot of harvester/ sha256 {_sources_digest(snapshot)} taken at the start"
                if snapshot
                else "the working tree as it was when each process started (--no-snapshot)",
            )
        )
        results = run_scenarios(sizes, keys, clients, workdir=workdir, log=log)
    about.append(
        ("load average at end (1/5/15 min)", " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    )
    digest_end = _sources_digest()
    if digest_end != dict(about)["harvester/ sources (sha256)"]:
        # Others edit the same tree while the suite runs.
        changed = "changed during the run" + (
            "; every client ran the snapshot taken at the start"
            if snapshot
            else " (**no snapshot: later clients may have run newer code**)"
        )
        about.append((f"working tree harvester/ at end ({changed})", digest_end))
        about.append(("git at end", _git()))
    report = render(
        results,
        sizes,
        smoke=args.smoke,
        started=started,
        seconds=time.perf_counter() - clock,
        about=about,
    )
    if args.out:
        Path(args.out).write_text(report + kept_log(Path(args.out)), encoding="utf-8")
        log(f"report written to {args.out}")
    else:
        print(report)
    failed = [m.name for r in results for m in r.measurements if not m.skipped and not m.ok]
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


LOG_HEADING = "## Improvement log"


def kept_log(path: Path) -> str:
    """The hand-kept improvement log of an existing report, to carry into the new one."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    at = text.find(LOG_HEADING)
    return "" if at < 0 else "\n" + text[at:]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
