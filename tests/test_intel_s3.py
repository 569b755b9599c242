"""The indicator table and its exports on S3 (moto's server): the same as on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymisp import MISPEvent

from harvester.errors import ConfigError
from harvester.sim.server import SimulatorThread

from harvesting import harvest
from intel_check import build, export, table_rows
from lakecheck import duckdb_for_s3
from s3_server import admin_client

FIRST = ("2024-01-30", "2024-02-01")
SECOND = ("2024-02-01", "2024-02-03")


@pytest.mark.slow
def test_s3_build_update_and_exports_equal_the_local_ones(
    sim: SimulatorThread, s3_bucket: tuple[str, str], tmp_path: Path
) -> None:
    endpoint, bucket = s3_bucket
    remote, local = f"s3://{bucket}/tg", str(tmp_path / "lake")
    for span in (FIRST, SECOND):
        for out, extra in ((remote, {"s3_endpoint_url": endpoint}), (local, {})):
            result = harvest(
                sim.url, out, after=span[0], before=span[1], confidence=0, severity=0, **extra
            )
            assert result.ok
        on_s3 = build(remote, s3_endpoint_url=endpoint)
        on_disk = build(local)
        assert on_s3.read == on_disk.read and on_s3.tables == on_disk.tables
        assert table_rows(remote, con=duckdb_for_s3(endpoint)) == table_rows(local)
    assert not on_s3.rebuild  # the second build was an update, on S3 too
    assert build(remote, s3_endpoint_url=endpoint).up_to_date

    # STIX: the same bytes, written to S3 as to disk
    export(remote, "stix21", f"s3://{bucket}/exports/bundle.json", s3_endpoint_url=endpoint)
    export(local, "stix21", str(tmp_path / "bundle.json"))
    with admin_client(endpoint) as client:
        body = client.get_object(Bucket=bucket, Key="exports/bundle.json")["Body"].read()
    assert body == (tmp_path / "bundle.json").read_bytes()

    # MISP: a feed folder served from S3, the manifest naming exactly the event files
    summary = export(remote, "misp", f"s3://{bucket}/misp", s3_endpoint_url=endpoint)
    with admin_client(endpoint) as client:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="misp/")["Contents"]
        names = {o["Key"].removeprefix("misp/") for o in listed}
        reply = client.get_object(Bucket=bucket, Key="misp/manifest.json")
        manifest = json.loads(reply["Body"].read())
        attributes = 0
        for uuid in manifest:
            event = MISPEvent()
            body = client.get_object(Bucket=bucket, Key=f"misp/{uuid}.json")["Body"].read()
            event.from_json(body.decode())
            attributes += len(event.attributes)
    assert names == {"manifest.json", "hashes.csv"} | {f"{u}.json" for u in manifest}
    assert attributes == summary.total > 0


@pytest.mark.slow
def test_an_iceberg_lake_on_s3_gives_the_table_a_local_hive_lake_gives(
    sim: SimulatorThread, s3_bucket: tuple[str, str], tmp_path: Path
) -> None:
    """The catalog as `run` was given it (a SQL catalog here), the files on S3."""
    endpoint, bucket = s3_bucket
    remote, local = f"s3://{bucket}/tg", str(tmp_path / "lake")
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    common = {"after": FIRST[0], "before": FIRST[1], "confidence": 0, "severity": 0}
    assert harvest(sim.url, local, **common).ok
    assert harvest(
        sim.url, remote, table_format="iceberg", catalog=catalog, s3_endpoint_url=endpoint,
        **common,
    ).ok  # fmt: skip
    with pytest.raises(ConfigError, match="Iceberg tables need --catalog"):
        build(remote, s3_endpoint_url=endpoint)
    with admin_client(endpoint) as client:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="tg/")["Contents"]
        assert not [o["Key"] for o in listed if "indicators/" in o["Key"]]  # nothing written
    on_s3 = build(remote, s3_endpoint_url=endpoint, catalog=catalog)
    on_disk = build(local)
    assert on_s3.read == on_disk.read and on_s3.tables == on_disk.tables
    assert table_rows(remote, con=duckdb_for_s3(endpoint)) == table_rows(local)
    assert build(remote, s3_endpoint_url=endpoint, catalog=catalog).up_to_date
