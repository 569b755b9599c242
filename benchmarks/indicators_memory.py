"""Peak memory of ``harvester indicators`` on a synthetic lake of years.

Writes a lake straight in the Hive layout (no API): every feed, every day for
``--years``, ``--rows`` records per feed and day. Values recur as they do in Threat
Grid's feeds: most come from a long-lived pool, so one value is seen on hundreds of
days; the rest are new each day. Then it runs ``harvester indicators`` in a child
process (a full build, then an update after one more day) and reports each run's
seconds and peak RSS (``ru_maxrss`` of the child).

    python -m benchmarks.indicators_memory --out /tmp/years --years 3 --rows 3000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.schemas import FEEDS

POOL = 200_000  # long-lived values per type
_VALUE = {
    "ips": {"ip": "'10.' || (v % 250) || '.' || (v // 250 % 250) || '.' || (v % 7)",
            "port": "443"},
    "domains": {"domain": "'d' || v || '.example.com'"},
    "urls": {"url": "'http://u' || v || '.example.com/x.php?id=' || v"},
    "paths": {"path": "'C:\\\\Users\\\\u\\\\' || v || '.exe'"},
    "artifacts": {"aid": "v % 5000", "artifact_md5": "md5('a' || v)",
                  "artifact_sha256": "sha256('a' || v)", "path": "'/tmp/' || v || '.sh'"},
    "network_streams": {"src": "'192.168.0.2'", "src_port": "50000",
                        "dst": "'8.' || (v % 250) || '.' || (v // 250 % 250) || '.1'",
                        "dst_port": "53"},
    "registry_keys": {"registry_key": "'HKLM\\\\Software\\\\k' || v"},
}  # fmt: skip


def _day_sql(feed: str) -> str:
    own = ", ".join(f"{expr} AS {name}" for name, expr in _VALUE[feed].items())
    sample = "NULL" if feed == "artifacts" else "sha256(sample_id)"
    return f"""
    WITH r AS (
        SELECT i,
               CASE WHEN hash(i, $day, 0) % 10 < 7 THEN hash(i, $day, 1) % {POOL}
                    ELSE {POOL} + $day * $rows + i END AS v,
               md5($day || '-' || (hash(i, $day, 2) % ($rows // 4 + 1))) AS sample_id
        FROM range($rows) t(i)
    )
    SELECT $base + (i * 86399 // $rows) AS timestamp,
           'ioc-' || (hash(i, $day, 3) % 15) AS ioc,
           (hash(i, $day, 4) % 101)::INTEGER AS confidence,
           (hash(i, $day, 5) % 101)::INTEGER AS severity,
           sample_id, {sample} AS sample_sha256, {own}, NULL::VARCHAR AS extra
    FROM r
    """


def write_lake(out: Path, start: date, days: int, rows: int) -> int:
    """Write ``days`` days of every feed; return the number of records."""
    con = duckdb.connect()
    total = 0
    for offset in range(days):
        day = start + timedelta(days=offset)
        base = int((day - date(1970, 1, 1)).total_seconds())
        for name, feed in FEEDS.items():
            params = {"day": (day - date(1970, 1, 1)).days, "rows": rows, "base": base}
            raw = con.execute(_day_sql(name), params).fetch_arrow_table()
            columns = []
            for field in feed.schema:
                column = raw.column(field.name)
                if field.name == "timestamp":
                    column = column.cast(pa.int64())
                columns.append(column.cast(field.type))
            table = pa.Table.from_arrays(columns, schema=feed.schema)
            folder = out / name / f"dt={day.isoformat()}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / "part-synthetic.parquet", compression="zstd")
            total += table.num_rows
    con.close()
    return total


def run_build(out: Path, *extra: str) -> tuple[float, float]:
    """Run ``harvester indicators`` in a child; return (seconds, its peak RSS in MiB)."""
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "harvester", "indicators", "--out", str(out),
         "--log-level", "warning", *extra],
    )  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"harvester indicators failed with {child.returncode}")
    return time.monotonic() - began, usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    """Write the lake (unless it is there), build, add a day, update; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3000, help="records per feed and day")
    parser.add_argument("--memory-limit", default="1GB")
    args = parser.parse_args(argv)
    start, days = date(2021, 1, 1), 365 * args.years
    if not (args.out / "ips").exists():
        began = time.monotonic()
        records = write_lake(args.out, start, days, args.rows)
        print(f"lake: {records:,} records, {days} days, {time.monotonic() - began:.0f} s")
    seconds, peak = run_build(args.out, "--rebuild", "--memory-limit", args.memory_limit)
    print(f"full build: {seconds:.0f} s, peak RSS {peak:.0f} MiB", flush=True)
    extra = 1 + max(
        (date.fromisoformat(p.name[3:]) - start).days for p in (args.out / "ips").iterdir()
    )
    write_lake(args.out, start + timedelta(days=extra), 1, args.rows)
    seconds, peak = run_build(args.out, "--memory-limit", args.memory_limit)
    print(f"update after one more day: {seconds:.1f} s, peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
