"""``harvester ddl``: exact Athena DDL, types that match the files, DuckDB views that count right.

The golden files in ``tests/golden/`` are the exact output of ``harvester ddl``. After an
intended change, regenerate them with ``UPDATE_GOLDEN=1 pytest tests/test_ddl.py`` and
review the diff.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from harvester.ddl import render_ddl
from harvester.errors import ConfigError
from harvester.orchestrator import RunResult
from harvester.schemas import FEEDS
from harvester.sim.server import SimulatorThread

from cli import cli
from harvesting import harvest
from lakecheck import athena_tables, duckdb_for_s3

GOLDEN = Path(__file__).parent / "golden"
EXAMPLE_OUT = "s3://example-bucket/threatgrid"
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)

# What Athena must declare for each Arrow type pyarrow reads back from a written file;
# written out here, not taken from harvester.ddl, so the test checks the mapping too.
ATHENA_FOR_FILE_TYPE = {
    "timestamp[ms, tz=UTC]": "timestamp",
    "timestamp[s, tz=UTC]": "timestamp",
    "int32": "int",
    "int64": "bigint",
    "string": "string",
}


@pytest.fixture(scope="module")
def lake(sim: SimulatorThread, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    """All feeds, three days, every record (confidence and severity 0), on local disk."""
    out = tmp_path_factory.mktemp("ddl") / "lake"
    result = harvest(sim.url, str(out), confidence=0, severity=0)
    assert result.ok
    return out, result


def statements(sql: str) -> list[str]:
    """The SQL statements of a DDL script (blocks separated by blank lines, not comments)."""
    return [block for block in sql.split("\n\n") if not block.startswith("--")]


@pytest.mark.parametrize("engine", ["athena", "duckdb"])
def test_ddl_matches_the_golden_file(engine: str) -> None:
    """The DDL for s3://example-bucket/threatgrid is exactly tests/golden/{engine}.sql."""
    golden = GOLDEN / f"{engine}.sql"
    rendered = render_ddl(EXAMPLE_OUT, engine=engine) + "\n"  # the CLI prints it with print()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"regenerate with UPDATE_GOLDEN=1 if intended: {golden}"


def test_ddl_command_prints_exactly_the_golden_file() -> None:
    """`harvester ddl --engine athena` prints the golden DDL byte for byte, exit 0."""
    done = cli(["ddl", "--out", EXAMPLE_OUT, "--engine", "athena"], key=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (GOLDEN / "athena.sql").read_text()


def test_athena_ddl_has_database_tables_and_partition_projection() -> None:
    """One database, a table per feed at its folder, and projection that finds every dt folder."""
    sql = render_ddl("s3://my-bucket/a/b/", engine="athena", database="tg", since="2020-06-01")
    assert sql.count("CREATE DATABASE IF NOT EXISTS `tg`;") == 1
    tables = athena_tables(sql)
    assert list(tables) == list(FEEDS)
    for feed, table in tables.items():
        assert table["db"] == "tg"
        assert table["location"] == f"s3://my-bucket/a/b/{feed}/"
        assert table["properties"] == {
            "projection.enabled": "true",
            "projection.dt.type": "date",
            "projection.dt.format": "yyyy-MM-dd",
            "projection.dt.range": "2020-06-01,NOW",
            "projection.dt.interval": "1",
            "projection.dt.interval.unit": "DAYS",
            "storage.location.template": f"s3://my-bucket/a/b/{feed}/dt=${{dt}}/",
        }


def test_athena_ddl_normalises_the_prefix() -> None:
    """Trailing slashes do not matter, and a bucket without a prefix puts feeds at its root."""
    assert render_ddl("s3://my-bucket/tg/", engine="athena") == render_ddl(
        "s3://my-bucket/tg", engine="athena"
    )
    tables = athena_tables(render_ddl("s3://my-bucket", engine="athena"))
    assert tables["ips"]["location"] == "s3://my-bucket/ips/"


@pytest.mark.parametrize(
    ("out", "options", "message"),
    [
        ("./lake", {}, "Athena reads only s3://bucket/prefix lakes"),
        ("/abs/lake", {}, "is not on S3"),
        ("s3://", {}, "has no bucket name"),
        ("s3://b/it's", {}, "quote"),
        ("s3://my-bucket/tg", {"database": "threat-grid"}, "not a valid Athena name"),
        ("s3://my-bucket/tg", {"since": "2013-13-01"}, "is not a date"),
        ("s3://my-bucket/tg", {"since": "yesterday"}, "is not a date"),
    ],
)
def test_athena_refuses_bad_input_in_one_line(
    out: str, options: dict[str, str], message: str
) -> None:
    """A local out, a bad bucket, database or since date is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        render_ddl(out, engine="athena", **options)
    assert "\n" not in str(caught.value)


def test_unknown_engine_and_scheme_are_config_errors() -> None:
    """An engine or an --out scheme the DDL does not know is a ConfigError."""
    with pytest.raises(ConfigError, match="--engine 'hive' is not known"):
        render_ddl("s3://my-bucket/tg", engine="hive")
    with pytest.raises(ConfigError, match="unknown scheme"):
        render_ddl("gs://my-bucket/tg", engine="duckdb")


def test_ddl_command_refuses_a_local_out_for_athena(tmp_path: Path) -> None:
    """`harvester ddl --engine athena --out DIR` exits 2 with one line on stderr."""
    done = cli(["ddl", "--out", str(tmp_path), "--engine", "athena"], key=None)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("harvester: error: ")


def test_athena_column_types_match_the_harvested_files(lake: tuple[Path, RunResult]) -> None:
    """Each table's columns, in order, have the Athena type of the Parquet files written."""
    root, _ = lake
    tables = athena_tables(render_ddl(EXAMPLE_OUT, engine="athena"))
    for feed, table in tables.items():
        files = sorted(root.glob(f"{feed}/dt=*/*.parquet"))
        assert files, f"no {feed} file was harvested"
        for path in files[:2]:
            schema = pq.read_schema(path)
            written = [(f.name, ATHENA_FOR_FILE_TYPE[str(f.type)]) for f in schema]
            assert table["columns"] == written, f"{feed}: DDL differs from {path}"
            # the projection's folder template names the folder the file is in
            template = str(table["properties"]["storage.location.template"])
            folder = template.removeprefix(EXAMPLE_OUT + "/").replace("${dt}", path.parent.name[3:])
            assert (root / folder / path.name) == path


def test_duckdb_views_count_every_record_by_day(
    sim: SimulatorThread, lake: tuple[Path, RunResult]
) -> None:
    """The DuckDB views over a harvested lake hold exactly the simulator's records, dt as DATE."""
    root, result = lake
    con = duckdb.connect()
    con.execute(render_ddl(str(root), engine="duckdb"))
    for feed in FEEDS:
        truth = sim.dataset.truth(feed, START, END, confidence=0, severity=0)
        by_day = Counter(item["timestamp"][:10] for item in truth)
        counted = con.execute(f'SELECT dt::VARCHAR, count(*) FROM "{feed}" GROUP BY dt').fetchall()
        assert dict(counted) == by_day
        assert sum(by_day.values()) == result.feeds[feed].rows
        types = dict(
            con.execute(f'SELECT column_name, column_type FROM (DESCRIBE "{feed}")').fetchall()
        )
        assert types["dt"] == "DATE" and types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
        assert list(types) == [*FEEDS[feed].schema.names, "dt"]


def test_duckdb_views_of_a_relative_out_work_from_anywhere(
    lake: tuple[Path, RunResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out ./lake` becomes an absolute path, so the views work from another folder."""
    root, result = lake
    monkeypatch.chdir(root.parent)
    sql = render_ddl(f"./{root.name}", engine="duckdb")
    assert f"'{root}/ips/*/*.parquet'" in sql
    monkeypatch.chdir(tmp_path)
    con = duckdb.connect()
    con.execute(sql)
    assert con.execute('SELECT count(*) FROM "ips"').fetchone() == (result.feeds["ips"].rows,)


def test_duckdb_view_of_a_feed_without_files_fails_as_documented(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    """The SQL comment is right: a feed with no file yet fails its CREATE VIEW, the rest work."""
    assert harvest(sim.url, str(tmp_path), feeds="ips").ok
    sql = render_ddl(str(tmp_path), engine="duckdb")
    assert "No files found that match the pattern" in sql
    con = duckdb.connect()
    views = statements(sql)
    assert [v.split('"')[1] for v in views] == list(FEEDS)
    for view in views:
        if 'VIEW "ips"' in view:
            con.execute(view)
            continue
        with pytest.raises(duckdb.IOException, match="No files found that match the pattern"):
            con.execute(view)
    assert con.execute('SELECT count(*) FROM "ips"').fetchone()[0] > 0


def test_duckdb_views_over_an_s3_lake(sim: SimulatorThread, s3_bucket: tuple[str, str]) -> None:
    """The DuckDB views read an s3:// lake (httpfs) and count the simulator's records."""
    endpoint, bucket = s3_bucket
    out = f"s3://{bucket}/tg/"
    feeds = ["ips", "artifacts"]
    assert harvest(
        sim.url, out, feeds=",".join(feeds), s3_endpoint_url=endpoint, confidence=0, severity=0
    ).ok
    con = duckdb_for_s3(endpoint)
    for statement in statements(render_ddl(out, engine="duckdb")):
        if any(f'VIEW "{feed}"' in statement for feed in feeds):
            con.execute(statement)
    for feed in feeds:
        truth = sim.dataset.truth(feed, START, END, confidence=0, severity=0)
        assert con.execute(f'SELECT count(*) FROM "{feed}"').fetchone() == (len(truth),)
