"""The command line: ``harvester run | plan | status | ddl | indicators | export | ...``.

This is the only module that configures logging, reads the environment for the API
key, installs signal handlers and turns errors into exit codes. Every error the
harvester expects is printed as one line, ``harvester: error: ...``, with no
traceback. Exit codes:

    0   every window of every requested feed is complete
    1   some windows failed; running the same command again finishes them
    2   bad input: flags, config file, environment
    3   the API refused the key (401/403)
    4   the lake cannot be written (permissions, missing bucket, credentials)
    5   the API cannot be reached at --base-url
    70  an internal error (a bug): please report it
    130 interrupted by SIGINT/SIGTERM; running the same command again resumes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson
import structlog

from harvester import logs
from harvester.cli_support import print_table
from harvester.config import API_KEY_ENV, DEFAULTS, OPTION_TYPES, build_config, load_toml
from harvester.errors import ConfigError, HarvesterError
from harvester.intel.resources import DEFAULT_MEMORY_LIMIT
from harvester.orchestrator import Harvest, RunResult, plan
from harvester.planner import Plan, describe_plan
from harvester.secret import Secret, redact
from harvester.storage import open_store

log = structlog.get_logger("harvester")

RUN_EXAMPLES = """examples:
  export THREATGRID_API_KEY=...
  harvester run --after 2024-01-01 --before 2024-02-01 --out ./lake
  harvester run --after 2024-01-01 --before 2024-01-02 --out s3://bucket/tg \\
      --feeds ips,domains --window 6h --confidence 0 --severity 0
  harvester run --config configs/backfill.toml --before 2024-06-01
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"harvester: error: {message}; see {self.prog} --help\n")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", metavar="FILE", help="TOML file with any of these options; flags win")
    add("--after", metavar="ISO", help="start of the range, inclusive (2024-01-01, ...Z, +01:00)")
    add("--before", metavar="ISO", help="end of the range, exclusive")
    add("--out", metavar="DIR|s3://BUCKET/PREFIX", help="where the lake lives")
    add("--feeds", metavar="all|ips,domains,...", help="feeds to harvest (default all)")
    add("--base-url", metavar="URL", help=f"API base URL (default {DEFAULTS['base_url']})")
    add("--window", metavar="1d|6h|1h|15m", help="window size on the UTC grid (default 1d)")
    add("--confidence", metavar="N", help="minimum confidence; 0 means all (API default 80)")
    add("--severity", metavar="N", help="minimum severity; 0 means all (API default 80)")
    add("--ioc", metavar="NAME", help="only this behaviour indicator")
    add("--org-only", action="store_const", const=True, help="only samples of your organisation")
    add("--user-only", action="store_const", const=True, help="only samples you submitted")
    add("--sample", metavar="ID,ID", help="only these sample ids")
    add(
        "--filter",
        metavar="KEY=VALUE",
        action="append",
        help="result restriction, e.g. domain=example.com (repeatable)",
    )
    add("--limit", metavar="N", help=f"page size to ask for (default {DEFAULTS['limit']})")
    add(
        "--concurrency",
        metavar="N",
        help=f"requests in flight at most (default {DEFAULTS['concurrency']})",
    )
    add(
        "--rate",
        metavar="REQ_PER_S",
        help=f"request rate ceiling for the whole job (default {DEFAULTS['rate']})",
    )
    add(
        "--auth",
        choices=("header", "query"),
        help="send the key as a Bearer header (default) or as the api_key query parameter",
    )
    add("--prefetch", metavar="N", help="pages fetched ahead inside one window (default 4)")
    add("--attempts", metavar="N", help="tries per request before a window fails (default 8)")
    add("--retry-timeout", metavar="S", help="give up retrying a request after S seconds")
    add("--request-timeout", metavar="S", help="time limit of one request (default 60)")
    add("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph, ...)")
    add("--shard", metavar="I/N", help="harvest only shard I of N (0-based)")
    add(
        "--shards",
        metavar="N",
        help="N shards; the index comes from JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX",
    )
    add(
        "--since-last",
        action="store_const",
        const=True,
        help="continue each feed from the end of its last contiguous complete window",
    )
    add("--lag", metavar="DURATION", help="with --before now: skip windows ending after now-lag")
    add(
        "--force",
        action="store_const",
        const=True,
        help="harvest complete windows again too (to pick up late records); files are replaced",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=tuple(logs.LEVELS), default="info")
    parser.add_argument("--log-json", action="store_true", help="JSON logs even on a TTY")


PLAN_EXAMPLES = """examples:
  harvester plan --after 2020-01-01 --before 2024-01-01 --out s3://bucket/tg --shards 8
  harvester plan --config configs/nightly-s3.toml --since-last --before now --lag 1h
"""
STATUS_EXAMPLES = """examples:
  harvester status --out ./lake
  harvester status --out s3://bucket/tg --json | jq .feeds.ips
"""
INDICATORS_EXAMPLES = """examples:
  harvester indicators --out ./lake
  harvester indicators --out s3://bucket/tg --memory-limit 4GB
  harvester indicators --out ./lake --rebuild      # recompute everything from the feeds
"""
EXPORT_EXAMPLES = """examples:
  harvester export --out ./lake --format txt --types domain --min-severity 80 \\
      --since 30d --allowlist allow.txt --to /srv/edl/domains.txt
  harvester export --out ./lake --format stix21 --tlp amber --to indicators.json
  harvester export --out s3://bucket/tg --format misp --to s3://bucket/misp-feed
  harvester export --out ./lake --format csv --types ip,url --to indicators.csv
"""
DDL_EXAMPLES = """examples:
  harvester ddl --out s3://bucket/tg --engine athena --database threatgrid > tables.sql
  harvester ddl --out ./lake --engine duckdb | duckdb lake.duckdb
"""


def _sub(sub: Any, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="harvester", description="Archive Threat Grid IOC feeds to Parquet.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = _sub(sub, "run", "harvest a time range into the lake", RUN_EXAMPLES)
    _add_run_options(run)
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    _add_common(run)
    plan_cmd = _sub(sub, "plan", "show what run would do, without calling the API", PLAN_EXAMPLES)
    _add_run_options(plan_cmd)
    plan_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(plan_cmd)
    status = _sub(
        sub, "status", "what the lake holds: complete, failed and missing dates", STATUS_EXAMPLES
    )
    status.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX")
    status.add_argument("--s3-endpoint-url", metavar="URL")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(status)
    ddl = _sub(sub, "ddl", "print CREATE statements for Athena or DuckDB", DDL_EXAMPLES)
    ddl.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX")
    ddl.add_argument("--engine", required=True, choices=("athena", "duckdb"))
    ddl.add_argument(
        "--database", default="threatgrid", help="Athena database (default threatgrid)"
    )
    ddl.add_argument(
        "--since",
        default="2013-01-01",
        help="first dt for Athena partition projection (default 2013-01-01)",
    )
    _add_common(ddl)
    indicators = _sub(
        sub,
        "indicators",
        "build or update the indicator table {out}/indicators from the whole lake",
        INDICATORS_EXAMPLES,
    )
    indicators.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX")
    indicators.add_argument("--s3-endpoint-url", metavar="URL")
    indicators.add_argument(
        "--rebuild", action="store_true", help="ignore earlier work and recompute everything"
    )
    indicators.add_argument(
        "--memory-limit",
        default=DEFAULT_MEMORY_LIMIT,
        metavar="SIZE",
        help=f"DuckDB's memory limit, beyond which it spills to disk ({DEFAULT_MEMORY_LIMIT})",
    )
    _add_common(indicators)
    export = _sub(
        sub,
        "export",
        "write the indicator table as STIX 2.1, a MISP feed, CSV or a plain blocklist",
        EXPORT_EXAMPLES,
    )
    export.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX", help="the lake")
    export.add_argument("--format", required=True, choices=("stix21", "misp", "csv", "txt"))
    export.add_argument(
        "--to", required=True, metavar="PATH", help="file (misp: folder) to write; s3:// too"
    )
    export.add_argument("--types", metavar="domain,ip,...", help="indicator types (default all)")
    export.add_argument("--min-severity", metavar="N", help="keep max_severity >= N")
    export.add_argument("--min-confidence", metavar="N", help="keep max_confidence >= N")
    export.add_argument(
        "--since", metavar="DATE|DURATION", help="keep last_seen >= this (2024-01-01, 30d, 12h)"
    )
    export.add_argument(
        "--tlp",
        default="white",
        choices=("white", "clear", "green", "amber", "red"),
        help="TLP marking for stix21 and misp (clear is white; default white)",
    )
    export.add_argument(
        "--include-private",
        action="store_true",
        help="keep IP addresses that are not globally routable (left out by default)",
    )
    export.add_argument(
        "--allowlist", metavar="FILE", help="values never to export, one a line (domains: +subs)"
    )
    export.add_argument("--s3-endpoint-url", metavar="URL")
    export.add_argument(
        "--memory-limit", default=DEFAULT_MEMORY_LIMIT, metavar="SIZE", help="DuckDB's (misp)"
    )
    _add_common(export)
    sim = _sub(
        sub,
        "simulate",
        "serve a simulated Threat Grid API on loopback",
        "example:\n  harvester simulate --port 8080 --seed 7\n"
        "  THREATGRID_API_KEY=sim-key harvester run --base-url http://127.0.0.1:8080 ...\n",
    )
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--rows-per-day", type=int, default=300)
    sim.add_argument("--api-key", default="sim-key", help="the key the simulator accepts")
    sim.add_argument("--max-limit", type=int, default=1000)
    sim.add_argument("--latency", type=float, default=0.0, help="seconds added to each page")
    sim.add_argument("--rate-limit", type=float, help="answer 429 above this many requests/s")
    sim.add_argument("--error-rate", type=float, default=0.0, help="share of 5xx answers")
    _add_common(sim)
    demo = _sub(
        sub,
        "demo",
        "harvest a month from a built-in simulator, then query it",
        "example:\n  harvester demo --out ./demo-lake\n",
    )
    demo.add_argument("--out", default="./demo-lake")
    _add_common(demo)
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge defaults < config file < flags into one dict of raw options."""
    from_file = load_toml(args.config) if args.config else {}
    # Every option a config file may hold has a flag of the same name, and vice versa.
    flags = {key: getattr(args, key) for key in OPTION_TYPES if getattr(args, key) is not None}
    return {**from_file, **flags}


def api_key_from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> Secret:
    """The API key, from the environment only."""
    value = env.get(API_KEY_ENV, "").strip()
    if not value:
        raise ConfigError(f"{API_KEY_ENV} is not set; export your Threat Grid API key in it")
    return Secret(value)


async def _run_async(harvest: Harvest) -> RunResult:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, harvest.stop)
    try:
        store = harvest.store
        the_plan = await plan(harvest.config, store)
        return await harvest.run(the_plan)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await harvest.store.close()


def summarise(result: RunResult) -> None:
    """Log one summary line per feed, then the run's outcome."""
    for feed, s in result.feeds.items():
        log.info(
            "feed.summary",
            feed=feed,
            windows=s.windows,
            done=s.done,
            skipped=s.skipped,
            failed=s.failed,
            pages=s.pages,
            rows=s.rows,
            requests=s.requests,
            retries=s.retries,
            throttled=s.throttled,
            seconds=round(s.seconds, 2),
        )
    log.info(
        "run.done",
        run_id=result.run_id,
        ok=result.ok,
        failed=len(result.failures),
        interrupted=result.interrupted,
        seconds=round(result.seconds, 2),
    )


def command_run(args: argparse.Namespace) -> int:
    """``harvester run``."""
    config = build_config(_options(args))
    key = api_key_from_env()
    store = open_store(config.out, s3_endpoint_url=config.s3_endpoint_url)
    harvest = Harvest(config, api_key=key, store=store)
    from harvester.progress import live_progress

    show = sys.stderr.isatty() and not args.no_progress
    with live_progress(harvest.snapshot, enabled=show):
        result = asyncio.run(_run_async(harvest))
    summarise(result)
    if result.interrupted:
        _say("interrupted; finished windows are saved, run the same command again to resume")
        return 130
    if result.failures:
        _say(
            f"{len(result.failures)} window(s) failed (see window.failed events); "
            "run the same command again to finish them"
        )
        return 1
    return 0


def command_plan(args: argparse.Namespace) -> int:
    """``harvester plan``: the run's plan from the manifest alone; no API call."""
    config = build_config(_options(args))
    store = open_store(config.out, s3_endpoint_url=config.s3_endpoint_url)

    async def go() -> Plan:
        try:
            return await plan(config, store)
        finally:
            await store.close()

    view = describe_plan(asyncio.run(go()), config.shard.count, config.feeds)
    if args.json:
        print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(
        f"Plan for {config.out}: {view['units']} windows, {view['done']} done, "
        f"{view['todo']} to harvest, at least {view['min_requests']} requests\n"
    )
    rows = [
        (f, v["windows"], v["done"], v["todo"], v["first"], v["last"])
        for f, v in view["feeds"].items()
    ]
    print_table(["feed", "windows", "done", "todo", "from", "until"], rows)
    if config.shard.count > 1:
        print()
        print_table(
            ["shard", "windows", "todo"],
            [(s["shard"], s["units"], s["todo"]) for s in view["shards"]],
        )
    return 0


def command_status(args: argparse.Namespace) -> int:
    """``harvester status``: what the lake holds, from its manifest and run reports."""
    from harvester.status import collect_status, render_status

    store = open_store(args.out, s3_endpoint_url=args.s3_endpoint_url)

    async def go() -> dict[str, Any]:
        try:
            return await collect_status(store)
        finally:
            await store.close()

    status = asyncio.run(go())
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_status(status))
    return 0


def command_ddl(args: argparse.Namespace) -> int:
    """``harvester ddl``: CREATE statements for the lake's tables."""
    from harvester.ddl import render_ddl

    print(render_ddl(args.out, engine=args.engine, database=args.database, since=args.since))
    return 0


def command_indicators(args: argparse.Namespace) -> int:
    """``harvester indicators``: build or update the indicator table."""
    from harvester.intel.build import BuildOptions, BuildResult, build_indicators

    options = BuildOptions(rebuild=args.rebuild, memory_limit=args.memory_limit)
    store = open_store(args.out, s3_endpoint_url=args.s3_endpoint_url)

    async def go() -> BuildResult:
        try:
            return await build_indicators(store, options=options)
        finally:
            await store.close()

    result = asyncio.run(go())
    where = f"{args.out.rstrip('/')}/indicators"
    if result.up_to_date:
        print(f"Indicator table {where} is up to date.")
        return 0
    how = "rebuilt" if result.rebuild else "updated"
    print(
        f"Indicator table {where} {how}: {len(result.read)} (feed, day)s read, "
        f"{len(result.dropped)} gone from the lake, {result.seconds:.1f} s\n"
    )
    print_table(["type", "indicators"], sorted(result.tables.items()))
    return 0


def command_export(args: argparse.Namespace) -> int:
    """``harvester export``: the indicator table in a TIP's or a firewall's format."""
    from collections import Counter
    from datetime import UTC, datetime

    from harvester.intel.export import ExportOptions, ExportSummary, export_indicators
    from harvester.intel.filters import (
        Allowlist,
        ExportFilter,
        parse_score,
        parse_since,
        parse_tlp,
        parse_types,
    )

    # Everything is checked before anything is read or written.
    options = ExportOptions(
        format=args.format,
        to=args.to,
        tlp=parse_tlp(args.tlp),
        memory_limit=args.memory_limit,
        filter=ExportFilter(
            types=parse_types(args.types),
            min_severity=parse_score(args.min_severity, name="--min-severity"),
            min_confidence=parse_score(args.min_confidence, name="--min-confidence"),
            since=parse_since(args.since, now=datetime.now(UTC)),
            include_private=args.include_private,
            allowlist=Allowlist.load(args.allowlist) if args.allowlist else Allowlist(),
        ),
    )
    store = open_store(args.out, s3_endpoint_url=args.s3_endpoint_url)

    async def go() -> ExportSummary:
        try:
            return await export_indicators(store, options, s3_endpoint_url=args.s3_endpoint_url)
        finally:
            await store.close()

    summary = asyncio.run(go())
    print(f"Exported {summary.total} indicators as {summary.format} to {summary.to}\n")
    reasons = sorted({r for counts in summary.skipped.values() for r in counts})
    rows = []
    for kind in options.filter.types:
        left_out = summary.skipped.get(kind, Counter())
        rows.append((kind, summary.exported[kind], *(left_out[r] for r in reasons)))
    print_table(["type", "exported", *(f"left out: {r}" for r in reasons)], rows)
    return 0


def command_simulate(args: argparse.Namespace) -> int:
    """``harvester simulate``."""
    from harvester.sim.data import DatasetSpec
    from harvester.sim.server import Faults, ServerOptions, serve

    options = ServerOptions(
        api_key=args.api_key,
        dataset=DatasetSpec(seed=args.seed, rows_per_day=args.rows_per_day),
        max_limit=args.max_limit,
        latency=args.latency,
        faults=Faults(rate_limit=args.rate_limit, error_rate=args.error_rate),
    )
    serve(options, host=args.host, port=args.port)
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """``harvester demo``."""
    from harvester.demo import run_demo

    return run_demo(out=args.out)


COMMANDS = {
    "run": command_run,
    "plan": command_plan,
    "status": command_status,
    "ddl": command_ddl,
    "indicators": command_indicators,
    "export": command_export,
    "simulate": command_simulate,
    "demo": command_demo,
}


def _say(message: str) -> None:
    print(f"harvester: {redact(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harvester`` console script."""
    args = build_parser().parse_args(argv)
    logs.configure(level=args.log_level, json=True if args.log_json else None)
    try:
        return COMMANDS[args.command](args)
    except HarvesterError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted; run the same command again to resume")
        return 130
    except Exception as exc:
        if args.log_level == "debug":
            raise
        _say(
            f"internal error: {type(exc).__name__}: {exc}; rerun with --log-level debug "
            "and report it"
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
