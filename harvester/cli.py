"""The command line: ``harvester run | plan | status | ddl | catalog | ...``.

This is the only module that configures logging, reads the environment for the API
key, installs signal handlers and turns errors into exit codes. Every error the
harvester expects is printed as one line, ``harvester: error: ...``, with no
traceback. Exit codes:

    0   every window of every requested feed is complete
    1   some windows failed; running the same command again finishes them
    2   bad input: flags, config file, environment
    3   the API refused the key (401/403)
    4   the lake or its Glue tables cannot be written (permissions, missing bucket or
        Glue database, credentials)
    5   the API cannot be reached at --base-url
    70  an internal error (a bug): please report it
    130 interrupted by SIGINT/SIGTERM; running the same command again resumes
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import structlog

from harvester import api, logs
from harvester.cli_support import print_table
from harvester.config import (
    DEFAULTS,
    MAINTAIN_DEFAULTS,
    OPTION_TYPES,
    TABLE_FORMATS,
    build_config,
    load_toml,
)
from harvester.ddl import DEFAULT_DATABASE, DEFAULT_SINCE
from harvester.errors import ConfigError, HarvesterError
from harvester.intel.resources import DEFAULT_MEMORY_LIMIT
from harvester.orchestrator import Harvest
from harvester.report import RunResult, summarise
from harvester.secret import redact
from harvester.storage import open_store

if TYPE_CHECKING:
    from harvester.sim.server import ServerOptions

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


def _default(name: str) -> str:
    """`` (default X)`` for a help text, from the one table of defaults."""
    return f" (default {DEFAULTS[name]})"


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", metavar="FILE", help="TOML file with any of these options; flags win")
    add("--after", metavar="ISO", help="start of the range, inclusive (2024-01-01, ...Z, +01:00)")
    add("--before", metavar="ISO", help="end of the range, exclusive")
    add("--out", metavar="DIR|s3://BUCKET/PREFIX", help="where the lake lives")
    add("--feeds", metavar="all|ips,domains,...", help=f"feeds to harvest{_default('feeds')}")
    add("--base-url", metavar="URL", help=f"API base URL{_default('base_url')}")
    add("--window", metavar="1d|6h|1h|15m", help=f"window size on the UTC grid{_default('window')}")
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
    add("--limit", metavar="N", help=f"page size to ask for{_default('limit')}")
    add(
        "--concurrency",
        metavar="N",
        help=f"requests in flight at most{_default('concurrency')}",
    )
    add(
        "--rate",
        metavar="REQ_PER_S",
        help=f"request rate ceiling for the whole job{_default('rate')}",
    )
    add(
        "--auth",
        choices=("header", "query"),
        help="send the key as a Bearer header (default) or as the api_key query parameter",
    )
    add(
        "--prefetch",
        metavar="N",
        help=f"pages fetched ahead inside one query span{_default('prefetch')}",
    )
    add(
        "--attempts",
        metavar="N",
        help=f"tries per request before a window fails{_default('attempts')}",
    )
    add(
        "--retry-timeout",
        metavar="S",
        help=f"give up retrying a request after S seconds{_default('retry_timeout')}",
    )
    add(
        "--request-timeout",
        metavar="S",
        help=f"time limit of one request, in seconds{_default('request_timeout')}",
    )
    add("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph, ...)")
    add(
        "--s3-multipart-threshold",
        metavar="BYTES",
        help=f"upload files this big or bigger to S3 in parts{_default('s3_multipart_threshold')}",
    )
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
        "--lookback",
        metavar="DURATION",
        help="harvest again the complete windows ending within DURATION before --before "
        "(records that arrived late); unchanged ones are not rewritten",
    )
    add(
        "--force",
        action="store_const",
        const=True,
        help="harvest complete windows again too (to pick up late records); files are replaced",
    )
    add(
        "--repair",
        action="store_const",
        const=True,
        help="verify the lake first: windows whose files are missing or damaged are harvested "
        "again (see harvester verify)",
    )
    add(
        "--max-span",
        metavar="DURATION",
        help=f"longest time one paged query covers{_default('max_span')}; sparse "
        "stretches use it, dense ones less",
    )
    add(
        "--max-page-bytes",
        metavar="BYTES",
        help=f"largest response body read{_default('max_page_bytes')}; a bigger page is "
        "asked for again with half the limit",
    )
    add(
        "--page-budget",
        metavar="BYTES",
        help=f"bytes of pages in flight at most{_default('page_budget')}: bounds memory",
    )
    add(
        "--commit-every",
        metavar="S",
        help=f"seconds between group commits{_default('commit_every')}: a crash loses at "
        "most this much work",
    )
    add(
        "--lease-ttl",
        metavar="S",
        help=f"seconds a (feed, month) lease lives unrenewed{_default('lease_ttl')}",
    )
    _add_iceberg_options(parser, run=True)


def _add_iceberg_options(parser: argparse.ArgumentParser, *, run: bool = False) -> None:
    add = parser.add_argument
    if run:
        add(
            "--table-format",
            choices=TABLE_FORMATS,
            help="hive: Parquet under dt= folders (default); iceberg: Apache Iceberg tables",
        )
    add(
        "--catalog",
        metavar="NAME|URI",
        help="Iceberg catalog: a NAME from ~/.pyiceberg.yaml, glue, sqlite:///PATH, "
        "postgresql://HOST/DB or an http(s):// REST URL (default {out}/_catalog.db)",
    )
    add(
        "--namespace",
        metavar="NS",
        help=f"Iceberg namespace of the feed tables (default {DEFAULTS['namespace']})",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=tuple(logs.LEVELS), default="info")
    parser.add_argument("--log-json", action="store_true", help="JSON logs even on a TTY")


def _add_lake(parser: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """``--out`` (a folder or an S3 prefix) and the S3 endpoint to reach it by."""
    parser.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX", help=help)
    parser.add_argument("--s3-endpoint-url", metavar="URL")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


PLAN_EXAMPLES = """examples:
  harvester plan --after 2020-01-01 --before 2024-01-01 --out s3://bucket/tg --shards 8
  harvester plan --config configs/nightly-s3.toml --since-last --before now --lag 1h
"""
STATUS_EXAMPLES = """examples:
  harvester status --out ./lake
  harvester status --out s3://bucket/tg --json | jq .feeds.ips
"""
MAINTAIN_EXAMPLES = """examples:
  harvester maintain --out ./lake --dry-run
  harvester maintain --out s3://bucket/tg --catalog glue --older-than 7d
  harvester maintain --out ./lake --older-than 30d --orphans-older-than 2d --json

For Iceberg lakes: compacts each day's small files, expires snapshots older than
--older-than, and removes files no snapshot references that are older than
--orphans-older-than (keep it longer than your longest run). Safe beside writers.
"""
INDICATORS_EXAMPLES = """examples:
  harvester indicators --out ./lake
  harvester indicators --out s3://bucket/tg --memory-limit 4GB
  harvester indicators --out ./lake --rebuild      # recompute everything from the feeds
  harvester indicators --out s3://bucket/tg --catalog glue   # an Iceberg lake's catalog

--catalog and --namespace are for Iceberg lakes (the manifest says which format a lake
is), as for `harvester run`: by default the catalog {out}/_catalog.db.
"""
EXPORT_EXAMPLES = """examples:
  harvester export --out ./lake --format txt --types domain --min-severity 80 \\
      --since 30d --allowlist allow.txt --to /srv/edl/domains.txt
  harvester export --out ./lake --format stix21 --tlp amber --to indicators.json
  harvester export --out s3://bucket/tg --format misp --to s3://bucket/misp-feed
  harvester export --out ./lake --format csv --types ip,url --to indicators.csv
"""
VERIFY_EXAMPLES = """examples:
  harvester verify --out ./lake
  harvester verify --out s3://bucket/tg --deep --json
  harvester verify --out ./lake --repair && harvester run --config job.toml

Exit 0 when the lake holds what its manifest says, 1 when something is damaged (with
--repair: the damaged windows are made incomplete, so the next run harvests them again).
"""
DDL_EXAMPLES = """examples:
  harvester ddl --out s3://bucket/tg --engine athena --database threatgrid > tables.sql
  harvester ddl --out ./lake --engine duckdb | duckdb lake.duckdb
"""
CATALOG_EXAMPLES = """examples:
  harvester catalog --out s3://bucket/tg --glue-database threatgrid
  harvester catalog --out s3://bucket/tg --glue-database threatgrid --no-create-database --json
  AWS_REGION=eu-west-1 harvester catalog --out s3://bucket/tg --glue-database tg --since 2020-01-01

Running it again changes nothing; a table is updated only when it differs (e.g. a feed
gained a column). Needs glue:GetDatabase, glue:CreateDatabase, glue:GetTable,
glue:CreateTable and glue:UpdateTable.
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
    _add_json(plan_cmd)
    _add_common(plan_cmd)
    status = _sub(
        sub, "status", "what the lake holds: complete, failed and missing dates", STATUS_EXAMPLES
    )
    _add_lake(status)
    _add_json(status)
    _add_common(status)
    verify = _sub(
        sub,
        "verify",
        "check that every recorded data file is there, whole; optionally repair",
        VERIFY_EXAMPLES,
    )
    _add_lake(verify)
    verify.add_argument("--feeds", metavar="all|ips,domains,...", default="all")
    verify.add_argument(
        "--deep", action="store_true", help="also read every file's footer and row count"
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="make damaged windows incomplete and delete unrecorded files",
    )
    _add_json(verify)
    _add_common(verify)
    ddl = _sub(sub, "ddl", "print CREATE statements for Athena or DuckDB", DDL_EXAMPLES)
    ddl.add_argument("--out", required=True, metavar="DIR|s3://BUCKET/PREFIX")
    ddl.add_argument("--engine", required=True, choices=("athena", "duckdb"))
    ddl.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"Athena database (default {DEFAULT_DATABASE})",
    )
    ddl.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        help=f"first dt for Athena partition projection (default {DEFAULT_SINCE})",
    )
    ddl.add_argument(
        "--table-format",
        choices=TABLE_FORMATS,
        default=DEFAULTS["table_format"],
        help="the lake's table format (default %(default)s); iceberg prints iceberg_scan views",
    )
    ddl.add_argument("--catalog", metavar="NAME|URI", help="an Iceberg lake's catalog")
    ddl.add_argument(
        "--namespace", default=DEFAULTS["namespace"], help="an Iceberg lake's namespace"
    )
    _add_common(ddl)
    catalog = _sub(
        sub,
        "catalog",
        "register the lake's tables in the AWS Glue Data Catalog (as ddl --engine athena)",
        CATALOG_EXAMPLES,
    )
    catalog.add_argument("--out", required=True, metavar="s3://BUCKET/PREFIX")
    catalog.add_argument(
        "--glue-database", required=True, metavar="NAME", help="Glue database of the tables"
    )
    catalog.add_argument(
        "--since",
        metavar="YYYY-MM-DD",
        default=DEFAULT_SINCE,
        help=f"first dt for partition projection (default {DEFAULT_SINCE})",
    )
    catalog.add_argument(
        "--no-create-database",
        action="store_true",
        help="refuse (exit 4) instead of creating a missing database",
    )
    catalog.add_argument(
        "--glue-endpoint-url",
        metavar="URL",
        help="Glue endpoint (default from AWS_ENDPOINT_URL_GLUE or the region)",
    )
    _add_json(catalog)
    _add_common(catalog)
    maintain = _sub(
        sub,
        "maintain",
        "Iceberg lakes: compact small files, expire old snapshots, remove orphans",
        MAINTAIN_EXAMPLES,
    )
    _add_lake(maintain)
    _add_iceberg_options(maintain)
    maintain.add_argument("--feeds", metavar="all|ips,domains,...", default="all")
    maintain.add_argument(
        "--older-than",
        metavar="AGE",
        default=MAINTAIN_DEFAULTS["older_than"],
        help="expire snapshots older than this (default %(default)s; 7d, 12h, 30m)",
    )
    maintain.add_argument(
        "--orphans-older-than",
        metavar="AGE",
        default=MAINTAIN_DEFAULTS["orphans_older_than"],
        help="remove unreferenced files older than this (default %(default)s)",
    )
    maintain.add_argument(
        "--dry-run", action="store_true", help="change nothing; report what would be done"
    )
    _add_json(maintain)
    _add_common(maintain)
    indicators = _sub(
        sub,
        "indicators",
        "build or update the indicator table {out}/indicators from the whole lake",
        INDICATORS_EXAMPLES,
    )
    _add_lake(indicators)
    _add_iceberg_options(indicators)
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
    _add_lake(export, help="the lake")
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
    # The options below default to None, so the simulator's dataclasses keep the defaults.
    add = sim.add_argument
    add("--max-span", type=_sim_span, help="refuse longer after..before ranges (e.g. 7d, 12h)")
    add("--max-offset", type=int, help="refuse larger offsets with a 400")
    add("--item-padding", type=int, help="characters of an extra 'padding' field on each item")
    add("--insert-while-paging", type=int, metavar="N",
        help="insert N records at a query's head after each full page at offset > 0")
    add("--insert-limit", type=int, metavar="N", help="insert at most N records in all")
    add("--endless-body-rate", type=float, help="share of 200s whose body never ends")
    add("--trickle-rate", type=float, help="share of 200s sent very slowly")
    add("--trickle-bytes-per-second", type=float, help="the speed of a trickled body")
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


async def _run_async(harvest: Harvest) -> RunResult:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, harvest.stop)
    try:
        return await harvest.execute()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await harvest.store.close()


def command_run(args: argparse.Namespace) -> int:
    """``harvester run``."""
    config = build_config(_options(args))
    harvest = api.prepare(config)
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
    if result.held:
        holders = ", ".join(result.held_by) or "another run"
        _say(
            f"{result.held} window(s) were left to the run holding their lease, {holders} "
            "(see span.held events); run the same command again once it has finished"
        )
        return 75
    return 0


def command_plan(args: argparse.Namespace) -> int:
    """``harvester plan``: the run's plan from the manifest alone; no API call."""
    config = build_config(_options(args), whole_job=True)
    view = api.plan_view(config)
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
    from harvester.status import render_status

    status = api.status(args.out, s3_endpoint_url=args.s3_endpoint_url)
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_status(status))
    return 0


def command_verify(args: argparse.Namespace) -> int:
    """``harvester verify``: the lake against its manifest (see :mod:`harvester.verify`)."""
    from harvester.config import parse_feeds
    from harvester.verify import verify

    feeds = parse_feeds(args.feeds)
    store = open_store(args.out, s3_endpoint_url=args.s3_endpoint_url)

    async def go() -> Any:
        try:
            return await verify(store, feeds=feeds, deep=args.deep, repair=args.repair)
        finally:
            await store.close()

    report = asyncio.run(go())
    if args.json:
        view = {"ok": report.ok, "feeds": {f: c.to_json() for f, c in report.feeds.items()}}
        print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    else:
        rows = [
            (
                feed,
                c.files,
                len(c.missing),
                len(c.wrong_size) + len(c.bad_footer) + len(c.wrong_rows),
                len(c.unrecorded),
                len(c.damaged_partitions),
                c.windows_lost,
                "yes" if c.repaired else "-",
            )
            for feed, c in report.feeds.items()
        ]
        headers = ["feed", "files", "missing", "damaged", "unrecorded", "bad manifest"]
        print_table([*headers, "windows lost", "repaired"], rows)
    if report.ok:
        return 0
    repaired = all(c.repaired for c in report.feeds.values() if not c.ok)
    _say(
        "the lake is damaged (see above); "
        + (
            "the damaged windows are now incomplete: run the same harvest again to refill them"
            if repaired
            else "run `harvester verify --repair`, then the same harvest again"
        )
    )
    return 1


def command_ddl(args: argparse.Namespace) -> int:
    """``harvester ddl``: CREATE statements for the lake's tables."""
    if args.table_format == "iceberg":
        from harvester.iceberg.catalog import open_catalog
        from harvester.iceberg.ddl import iceberg_athena_ddl, iceberg_duckdb_ddl
        from harvester.iceberg.tables import load_table
        from harvester.schemas import FEEDS

        if args.engine == "duckdb":
            # Views only for the tables the lake has: a view over a missing one fails.
            lake = open_catalog(args.out, args.catalog, namespace=args.namespace)
            feeds = [f for f in FEEDS if load_table(lake, f) is not None]
            print(iceberg_duckdb_ddl(args.out, catalog=args.catalog, feeds=feeds))
        else:
            print(iceberg_athena_ddl(args.out, catalog=args.catalog, namespace=args.namespace))
        return 0
    from harvester.ddl import render_ddl

    print(render_ddl(args.out, engine=args.engine, database=args.database, since=args.since))
    return 0


def _sim_span(text: str) -> timedelta:
    """``--max-span``: a whole number of days, hours, minutes or seconds (``7d``, ``90m``)."""
    match = re.fullmatch(r"([0-9]+)([dhms])", text.strip())
    if not match or not int(match[1]):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 7d, 12h or 90m")
    return timedelta(seconds=int(match[1]) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[match[2]])


def simulator_options(args: argparse.Namespace) -> ServerOptions:
    """The :class:`~harvester.sim.server.ServerOptions` of ``harvester simulate``'s flags.

    Raises :class:`ConfigError` for values the simulator refuses (a rate above 1 ...).
    """
    from harvester.sim.data import DatasetSpec
    from harvester.sim.server import Faults, ServerOptions

    def given(*names: str) -> dict[str, Any]:
        return {name: getattr(args, name) for name in names if getattr(args, name) is not None}

    try:
        return ServerOptions(
            api_key=args.api_key,
            dataset=DatasetSpec(
                seed=args.seed, rows_per_day=args.rows_per_day, **given("item_padding")
            ),
            max_limit=args.max_limit,
            latency=args.latency,
            faults=Faults(
                rate_limit=args.rate_limit,
                error_rate=args.error_rate,
                **given(
                    "insert_while_paging",
                    "insert_limit",
                    "endless_body_rate",
                    "trickle_rate",
                    "trickle_bytes_per_second",
                ),
            ),
            **given("max_span", "max_offset"),
        )
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}") from exc


def command_catalog(args: argparse.Namespace) -> int:
    """``harvester catalog``: create or update the lake's tables in the Glue Data Catalog."""
    from harvester.glue import register

    result = register(
        args.out,
        database=args.glue_database,
        since=args.since,
        create_database=not args.no_create_database,
        endpoint_url=args.glue_endpoint_url,
    )
    if args.json:
        print(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"Glue database {result.database}: {result.database_action}\n")
    print_table(
        ["table", "action", "location"], [(t.name, t.action, t.location) for t in result.tables]
    )
    return 0


def command_maintain(args: argparse.Namespace) -> int:
    """``harvester maintain``: compaction, snapshot expiry and orphan removal (Iceberg)."""
    from harvester.config import parse_feeds
    from harvester.iceberg.catalog import open_catalog
    from harvester.iceberg.maintain import MaintainOptions, maintain_lake, parse_age, render

    options = MaintainOptions(
        older_than=parse_age(args.older_than, flag="--older-than"),
        orphans_older_than=parse_age(args.orphans_older_than, flag="--orphans-older-than"),
        dry_run=args.dry_run,
    )
    feeds = parse_feeds(args.feeds)
    lake = open_catalog(
        args.out,
        args.catalog,
        namespace=args.namespace or DEFAULTS["namespace"],
        s3_endpoint_url=args.s3_endpoint_url,
    )
    reports = maintain_lake(lake, feeds, options)
    if args.json:
        view = {"dry_run": options.dry_run, "tables": [r.describe() for r in reports]}
        print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(reports, dry_run=options.dry_run))
    return 0


def command_indicators(args: argparse.Namespace) -> int:
    """``harvester indicators``: build or update the indicator table."""
    from harvester.intel.build import BuildOptions, BuildResult, build_indicators
    from harvester.intel.manifest_source import IcebergAccess

    options = BuildOptions(rebuild=args.rebuild, memory_limit=args.memory_limit)
    iceberg = IcebergAccess(
        out=args.out,
        catalog=args.catalog,
        namespace=args.namespace,
        s3_endpoint_url=args.s3_endpoint_url,
    )
    store = open_store(args.out, s3_endpoint_url=args.s3_endpoint_url)

    async def go() -> BuildResult:
        try:
            return await build_indicators(store, options=options, iceberg=iceberg)
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
    from harvester.sim.server import serve

    serve(simulator_options(args), host=args.host, port=args.port)
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
    "catalog": command_catalog,
    "verify": command_verify,
    "maintain": command_maintain,
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
