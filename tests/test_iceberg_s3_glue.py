"""Iceberg tables on S3 with AWS Glue as the catalog: moto's S3 and Glue in server mode.

The same calls as on a local lake, against real HTTP: pyarrow writes the data files to
S3, pyiceberg's Glue catalog registers the tables, DuckDB reads them back through httpfs
and the version hint. (moto's Glue ignores ``VersionId``, so lost commits would pass
here: the concurrency test runs on SQLite.)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from harvester.errors import ConfigError
from harvester.iceberg.catalog import IcebergLake, open_catalog
from harvester.iceberg.commit import commit_windows, summary_properties
from harvester.iceberg.ddl import iceberg_athena_ddl, iceberg_duckdb_ddl
from harvester.iceberg.maintain import MaintainOptions, maintain_lake
from harvester.iceberg.tables import ensure_table
from harvester.sim.data import Dataset, DatasetSpec

from icebergcheck import (
    assert_same,
    day,
    duckdb_connection,
    duckdb_items,
    hours,
    pyiceberg_items,
    truth,
    write_group,
)

DATA = Dataset(DatasetSpec(seed=13, rows_per_day=100))
FEED = "domains"


@pytest.fixture
def glue_lake(
    s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[IcebergLake, str]]:
    """A lake at s3://bucket/tg whose catalog is moto's Glue, configured as a NAME."""
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path))  # no ~/.pyiceberg.yaml of the host
    monkeypatch.setenv("PYICEBERG_CATALOG__MOTO__TYPE", "glue")
    monkeypatch.setenv("PYICEBERG_CATALOG__MOTO__GLUE__ENDPOINT", endpoint)
    monkeypatch.setenv("PYICEBERG_CATALOG__MOTO__GLUE__REGION", "us-east-1")
    namespace = f"ns_{bucket.replace('-', '_')}"
    lake = open_catalog(f"s3://{bucket}/tg", "moto", namespace=namespace, s3_endpoint_url=endpoint)
    yield lake, endpoint
    glue = boto3.client("glue", endpoint_url=endpoint, region_name="us-east-1")
    for table in glue.get_tables(DatabaseName=namespace).get("TableList", []):
        glue.delete_table(DatabaseName=namespace, Name=table["Name"])
    glue.delete_database(Name=namespace)


def s3_duckdb(endpoint: str):  # type: ignore[no-untyped-def]
    from lakecheck import duckdb_for_s3

    return duckdb_connection(duckdb_for_s3(endpoint))


def test_glue_catalog_on_s3_commit_replace_and_read_back(
    glue_lake: tuple[IcebergLake, str],
) -> None:
    lake, endpoint = glue_lake
    table = ensure_table(lake, FEED)
    assert table.location() == f"{lake.root}/{FEED}"
    glue = boto3.client("glue", endpoint_url=endpoint, region_name="us-east-1")
    stored = glue.get_table(DatabaseName=lake.namespace, Name=FEED)["Table"]
    assert stored["Parameters"]["table_type"].upper() == "ICEBERG"
    assert stored["Parameters"]["metadata_location"].startswith(f"{lake.root}/{FEED}/metadata/")

    windows = hours(day("2024-06-01"), 8)
    files = write_group(table, FEED, truth(DATA, FEED, windows))
    props = summary_properties(run_id="s3-run", windows=windows, fingerprint="fp")
    first = commit_windows(table, windows=windows, files=files, properties=props)
    fewer = truth(DATA, FEED, [windows[3]])[1::3]
    second = commit_windows(
        table,
        windows=[windows[3]],
        files=write_group(table, FEED, fewer),
        properties=props,
    )
    assert first is not None and second is not None
    assert second.sequence_number > first.sequence_number
    want = truth(DATA, FEED, windows[:3]) + fewer + truth(DATA, FEED, windows[4:])
    assert_same(pyiceberg_items(table), want, "pyiceberg over S3")
    # Glue now points at the newest metadata, which another process reads back.
    reopened = ensure_table(
        open_catalog(lake.root, "moto", namespace=lake.namespace, s3_endpoint_url=endpoint), FEED
    )
    assert reopened.metadata_location == table.metadata_location
    assert_same(pyiceberg_items(reopened), want, "a second catalog handle")

    con = s3_duckdb(endpoint)
    con.execute(iceberg_duckdb_ddl(lake.root, feeds=[FEED]))
    assert_same(duckdb_items(con, FEED, view=True), want, "DuckDB view over S3")

    athena = iceberg_athena_ddl(lake.root, catalog="glue", namespace=lake.namespace)
    assert f"{lake.namespace}.{FEED}" in athena and "nothing to run" in athena.lower()

    later = datetime.now(UTC) + timedelta(days=30)
    (report,) = maintain_lake(lake, [FEED], MaintainOptions(dry_run=True), now=later)
    assert report.expired == (first.snapshot_id,)
    # The first group's day file replaced in the second commit goes with the expiry.
    assert {o.path for o in report.orphans} >= {
        f.file.file_path for f in table.scan(snapshot_id=first.snapshot_id).plan_files()
    } - {f.file.file_path for f in table.scan().plan_files()}
    assert all(o.path.startswith(f"{lake.root}/{FEED}/") for o in report.orphans)


def test_glue_as_a_uri_takes_its_endpoint_from_the_environment(
    s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL_GLUE", endpoint)
    lake = open_catalog(f"s3://{bucket}/x", "glue", namespace="uri_glue", s3_endpoint_url=endpoint)
    table = ensure_table(lake, FEED)
    windows = hours(day("2024-06-02"), 4)
    items = truth(DATA, FEED, windows)
    commit_windows(table, windows=windows, files=write_group(table, FEED, items), properties={})
    assert_same(pyiceberg_items(table), items, "glue URI")
    lake.catalog.drop_table(lake.identifier(FEED))
    lake.catalog.drop_namespace("uri_glue")


def test_s3_needs_a_catalog_and_glue_needs_s3(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is on S3, so Iceberg tables need --catalog"):
        open_catalog("s3://bucket/tg", None)
    with pytest.raises(ConfigError, match="glue needs an s3:// --out"):
        open_catalog(str(tmp_path), "glue")
