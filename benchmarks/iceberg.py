"""The harvester's Iceberg path in scenarios a and e: its lake read back, and set beside Hive.

The client ``harvester-iceberg`` (:data:`benchmarks.harness.ICEBERG`) runs the harvester's
very job with ``--table-format iceberg`` (a local lake: the default SQLite catalog at
``{out}/_catalog.db``), measured like the harvester. After each measured run, outside its
time and its process (its CPU and peak RSS stay the harvest's), :func:`check` reads the
lake back in a fresh process (:func:`inspect`):

* every table with pyiceberg's own scan (streamed), its rows per feed compared with the
  records the server holds for the range (the warm pass's count, the truth every
  client's rows are set beside), and with the Hive harvester's lake of the same run as
  multisets of rows (DuckDB ``EXCEPT ALL`` both ways, ``timestamp`` in microseconds);
* the snapshots of each table (``table.metadata.snapshots``) and the files under
  ``{out}/{feed}/metadata/`` (of which ``*.metadata.json``, one per catalog commit plus
  the table's creation) and ``{out}/{feed}/data/``.

A difference fails the measurement, as a crash does. :func:`summarize` then adds to the
scenario the Iceberg/Hive ratios (same run) and the checks of issue 14: exact rows, and a
bounded number of commits -- at most one snapshot per table per group commit (every
``--commit-every`` seconds, and at the end), whatever the number of windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ICEBERG,
    Check,
    Log,
    Measurement,
    ScenarioResult,
    fmt,
    run_tool,
)
from harvester.config import DEFAULTS

#: The harvester's default ``--commit-every``: a group commit at most this often.
COMMIT_EVERY = float(DEFAULTS["commit_every"])


def hive_files(lake: Path, feed: str) -> list[str]:
    """The data files of ``feed`` in a Hive-layout lake, as readers see them."""
    return sorted(
        str(p) for p in lake.glob(f"{feed}/dt=*/*.parquet") if not p.name.startswith((".", "_"))
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def inspect(job: dict[str, Any]) -> dict[str, Any]:
    """Read an Iceberg lake back (the worker ``iceberg-inspect``); per feed what was found.

    ``job``: ``out`` (the Iceberg lake), ``feeds``, and ``hive_out`` (a Hive lake of the
    same records to compare with, or None). Per feed: ``rows`` (pyiceberg's scan),
    ``snapshots``, ``metadata_files``, ``metadata_json``, ``metadata_bytes``,
    ``data_files``, and with a Hive lake ``hive_rows``, ``missing`` (rows of the Hive
    lake not in the table) and ``unexpected`` (rows of the table not in the Hive lake).
    """
    import duckdb

    from harvester.iceberg.catalog import open_catalog
    from harvester.iceberg.tables import load_table
    from harvester.schemas import FEEDS

    out = Path(job["out"])
    hive = Path(job["hive_out"]) if job.get("hive_out") else None
    lake = open_catalog(str(out), None)
    con = duckdb.connect()
    tables: dict[str, dict[str, Any]] = {}
    for feed in job["feeds"]:
        names = FEEDS[feed].schema.names
        # The timestamp as microseconds on both sides: seconds in Hive, microseconds here.
        columns = ", ".join(
            'epoch_us("timestamp") AS "timestamp"' if n == "timestamp" else f'"{n}"' for n in names
        )
        meta = _files(out / feed / "metadata")
        found: dict[str, Any] = {
            "snapshots": 0,
            "rows": 0,
            "metadata_files": len(meta),
            "metadata_json": sum(p.name.endswith(".metadata.json") for p in meta),
            "metadata_bytes": sum(p.stat().st_size for p in meta),
            "data_files": sum(p.suffix == ".parquet" for p in _files(out / feed / "data")),
        }
        table = load_table(lake, feed)
        if table is None:  # the harvester makes every feed's table: a failure, said by check()
            found["rows"] = None
            tables[feed] = found
            continue
        found["snapshots"] = len(table.metadata.snapshots)
        # pyiceberg's own scan, a batch at a time, into DuckDB (which may spill).
        con.register("scanned", table.scan().to_arrow_batch_reader())
        con.execute(f"CREATE OR REPLACE TEMP TABLE ice AS SELECT {columns} FROM scanned")
        con.unregister("scanned")
        found["rows"] = _one(con, "SELECT count(*) FROM ice")
        files = hive_files(hive, feed) if hive is not None else []
        if files:
            source = f"read_parquet({files!r}, hive_partitioning = false)"
            con.execute(f"CREATE OR REPLACE TEMP TABLE hive AS SELECT {columns} FROM {source}")
            found["hive_rows"] = _one(con, "SELECT count(*) FROM hive")
            found["missing"] = _one(con, "SELECT count(*) FROM (FROM hive EXCEPT ALL FROM ice)")
            found["unexpected"] = _one(con, "SELECT count(*) FROM (FROM ice EXCEPT ALL FROM hive)")
        elif hive is not None:  # a feed with no records: nothing to miss
            found.update(hive_rows=0, missing=0, unexpected=found["rows"])
        tables[feed] = found
    return {"rows": sum(t["rows"] or 0 for t in tables.values()), "seconds": 0.0, "tables": tables}


def _one(con: Any, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0


def check(
    m: Measurement,
    *,
    served: Mapping[str, int],
    hive: Measurement | None,
    workdir: Path,
    timeout: float,
    log: Log,
) -> None:
    """Read back the lake ``m`` (a ``harvester-iceberg`` run) wrote; fail ``m`` if not exact.

    ``served`` are the records the server holds per feed for the range (the warm pass's
    count); ``hive`` the Hive harvester's measurement of the same run, whose lake the
    tables are compared with row for row. What was found goes to ``m.extra["tables"]``.
    """
    if m.skipped or not m.ok:
        return
    hive_out = hive.extra.get("out") if hive is not None and hive.ok else None
    job = {"out": m.extra["out"], "feeds": sorted(served), "hive_out": hive_out}
    run_dir = workdir / f"{m.client}-{m.label or 'run'}-read-back".replace(" ", "_")
    try:
        found = run_tool("iceberg-inspect", job, run_dir, timeout=timeout)
    except RuntimeError as exc:
        m.ok, m.note = False, f"read back failed: {exc}"
        log(f"    {m.name}: FAILED ({m.note})")
        return
    tables: dict[str, dict[str, Any]] = found["tables"]
    m.extra["tables"] = tables
    m.extra["compared_with_hive"] = hive_out is not None
    wrong = []
    for feed, want in sorted(served.items()):
        t = tables[feed]
        if t["rows"] is None:
            wrong.append(f"{feed}: no table")
        elif t["rows"] != want:
            wrong.append(f"{feed}: {t['rows']:,} rows read back, the server holds {want:,}")
        if t.get("missing") or t.get("unexpected"):
            wrong.append(
                f"{feed}: {t['missing']:,} rows of the Hive lake missing, "
                f"{t['unexpected']:,} rows not in it"
            )
    if wrong:
        m.ok, m.note = False, "read back: " + "; ".join(wrong)
    snapshots = [t["snapshots"] for t in tables.values()]
    metadata = [t["metadata_files"] for t in tables.values()]
    log(
        f"    {m.name}: read back {found['rows']:,} rows "
        f"({'NOT EXACT: ' + '; '.join(wrong) if wrong else 'exact'}); snapshots per table "
        f"{_span(snapshots)}, metadata files per table {_span(metadata)}"
    )


def _span(values: Sequence[int]) -> str:
    """``3`` or ``2-5``: the smallest and the largest."""
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def _times(a: float, b: float) -> str:
    return fmt(a / b if b else None, ".2f", " x")


def summarize(result: ScenarioResult, *, label: str = "") -> None:
    """Add the Iceberg path's checks, ratios to Hive and per-table notes to ``result``.

    Nothing is added when the client was not asked for; a skipped client (pyiceberg not
    installed) leaves a check that says so.
    """
    ran = [m for m in result.measurements if m.client == ICEBERG and m.label == label]
    if not ran:
        return
    ice, hive = ran[0], result.get("harvester", label)
    exact = "Iceberg path: the rows read back (pyiceberg's scan) are the records served, "
    exact += "and the Hive lake's row for row"
    bound_target = (
        f"Iceberg path: snapshots per table <= 1 + wall s / --commit-every "
        f"({COMMIT_EVERY:g} s): one per group commit, whatever the number of windows"
    )
    same_run = "Iceberg / Hive, same run: reported, no target"
    tables: dict[str, dict[str, Any]] = ice.extra.get("tables", {})
    if ice.skipped or not tables:
        why = ice.skipped or f"n/a ({ice.note or 'no read-back'})"
        result.checks += [
            Check(target=exact, measured=why, met=None if ice.skipped else False),
            Check(target=bound_target, measured=why, met=None),
        ]
        return
    windows: dict[str, int] = ice.extra.get("windows", {})
    snapshots = [t["snapshots"] for t in tables.values()]
    bound = 1 + int(ice.seconds // COMMIT_EVERY)
    compared = ice.extra.get("compared_with_hive")
    result.checks.append(
        Check(
            target=exact,
            measured=f"{sum(t['rows'] or 0 for t in tables.values()):,} rows in "
            f"{len(tables)} tables"
            + ("" if compared else " (no Hive lake to compare with)")
            + (f": {ice.note}" if not ice.ok else ""),
            met=ice.ok,
        )
    )
    result.checks.append(
        Check(
            target=bound_target,
            measured=f"{_span(snapshots)} snapshots per table (bound {bound} for "
            f"{ice.seconds:.1f} s) for {_span(list(windows.values()))} windows per table; "
            f"{_span([t['metadata_files'] for t in tables.values()])} metadata files per "
            f"table, {sum(t['metadata_files'] for t in tables.values())} in all",
            met=max(snapshots) <= bound,
        )
    )
    if hive is not None and hive.ok and ice.ok:
        result.ratios.update(
            {
                "Iceberg/Hive wall s": ice.seconds / hive.seconds if hive.seconds else None,
                "Iceberg/Hive CPU s": ice.cpu_seconds / hive.cpu_seconds
                if hive.cpu_seconds
                else None,
                "Iceberg/Hive peak RSS": ice.peak_rss_mb / hive.peak_rss_mb
                if hive.peak_rss_mb
                else None,
                "Iceberg/Hive requests": ice.requests / hive.requests if hive.requests else None,
            }
        )
        result.checks.append(
            Check(
                target=same_run,
                measured=f"wall {_times(ice.seconds, hive.seconds)} ({ice.seconds:.2f} s vs "
                f"{hive.seconds:.2f} s), CPU {_times(ice.cpu_seconds, hive.cpu_seconds)}, "
                f"peak RSS {_times(ice.peak_rss_mb, hive.peak_rss_mb)} "
                f"({ice.peak_rss_mb:.0f} MB vs {hive.peak_rss_mb:.0f} MB), requests "
                f"{_times(ice.requests, hive.requests)} ({ice.requests:,} vs {hive.requests:,})",
                met=None,
            )
        )
    result.notes.append(
        f"{ice.name}, per table (snapshots / files under metadata/, of which "
        "*.metadata.json / data files / windows / rows): "
        + "; ".join(
            f"{feed} {t['snapshots']} / {t['metadata_files']} ({t['metadata_json']}) / "
            f"{t['data_files']} / {windows.get(feed, 0):,} / {t['rows'] or 0:,}"
            for feed, t in sorted(tables.items())
        )
        + f". Metadata written: {sum(t['metadata_bytes'] for t in tables.values()) / 1024:,.0f}"
        " KiB in all."
    )
