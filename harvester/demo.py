"""``harvester demo``: the whole product in one command, on the built-in simulator.

Starts the simulator on a free loopback port, harvests a month of all seven feeds
into ``./demo-lake`` and prints a short DuckDB summary of the lake. Running it again
resumes: complete windows are skipped.
"""

from __future__ import annotations

import os

from harvester import api
from harvester.cli_support import print_table
from harvester.report import summarise
from harvester.schemas import FEEDS
from harvester.sim.data import DatasetSpec
from harvester.sim.server import ServerOptions, SimulatorThread

DEMO_KEY = "demo-key-not-a-secret"
AFTER, BEFORE = "2024-01-01", "2024-02-01"


def run_demo(*, out: str) -> int:
    """Harvest the demo month and print what landed; return the exit code."""
    options = ServerOptions(api_key=DEMO_KEY, dataset=DatasetSpec(seed=7, rows_per_day=400))
    with SimulatorThread(options) as sim:
        config = api.make_config(
            after=AFTER,
            before=BEFORE,
            out=out,
            base_url=sim.url,
            confidence=0,
            severity=0,
            rate=200,
            concurrency=16,
            env={},
        )
        result = api.harvest(config, api_key=DEMO_KEY)
    summarise(result)
    if not result.ok:
        return 1
    _report(os.path.abspath(out))
    return 0


def _report(root: str) -> None:
    import duckdb

    con = duckdb.connect()
    counts = []
    for feed in sorted(result_feeds(root)):
        glob = f"{root}/{feed}/*/*.parquet"
        n = con.execute(
            "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)", [glob]
        ).fetchone()
        counts.append((feed, n[0] if n else 0))
    print(f"\nLake at {root}\n")
    print_table(["feed", "rows"], counts)
    top = con.execute(
        "SELECT domain, count(*) AS sightings, max(severity) AS max_severity "
        "FROM read_parquet(?, hive_partitioning = true) WHERE domain IS NOT NULL "
        "GROUP BY domain ORDER BY sightings DESC, domain LIMIT 10",
        [f"{root}/domains/*/*.parquet"],
    ).fetchall()
    print("\nTop 10 domains by sightings (SELECT domain, count(*) ... GROUP BY domain):\n")
    print_table(["domain", "sightings", "max_severity"], top)


def result_feeds(root: str) -> list[str]:
    """Feed folders present in a local lake (not ``indicators/``, should it be built)."""
    return [feed for feed in FEEDS if os.path.isdir(os.path.join(root, feed))]
