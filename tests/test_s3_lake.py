"""The lake on S3 (a real S3-protocol server): same layout, exactness, resume and errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from harvester.errors import StorageAccessError
from harvester.sim.server import SimulatorThread

from harvesting import harvest
from lakecheck import assert_lake_exact, duckdb_for_s3

START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)


def keys(endpoint: str, bucket: str) -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
    finally:
        client.close()


def test_s3_lake_is_exact_and_laid_out_like_local(
    sim: SimulatorThread, s3_bucket: tuple[str, str], tmp_path: Path
) -> None:
    """--out s3://bucket/prefix gives the local layout and an exact lake read by DuckDB httpfs."""
    endpoint, bucket = s3_bucket
    feeds = ["ips", "registry_keys", "artifacts"]
    out = f"s3://{bucket}/tg"
    result = harvest(
        sim.url, out, feeds=",".join(feeds), s3_endpoint_url=endpoint, confidence=0, severity=0
    )
    assert result.ok
    truth = {f: sim.dataset.truth(f, START, END, confidence=0, severity=0) for f in feeds}
    assert_lake_exact(out, truth, con=duckdb_for_s3(endpoint))
    local = tmp_path / "local"
    assert harvest(sim.url, str(local), feeds=",".join(feeds), confidence=0, severity=0).ok
    s3_keys = {k.removeprefix("tg/") for k in keys(endpoint, bucket)}
    local_keys = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    data = {k for k in local_keys if not k.startswith("_runs/")}
    assert data == {k for k in s3_keys if not k.startswith("_runs/")}


def test_s3_rerun_skips_and_changes_no_object(
    sim: SimulatorThread, s3_bucket: tuple[str, str]
) -> None:
    """A second run against S3 skips every window and rewrites no object (same ETags)."""
    endpoint, bucket = s3_bucket
    out = f"s3://{bucket}/lake"
    assert harvest(sim.url, out, feeds="domains", s3_endpoint_url=endpoint).ok
    before = keys(endpoint, bucket)
    again = harvest(sim.url, out, feeds="domains", s3_endpoint_url=endpoint)
    assert again.ok
    assert again.feeds["domains"].skipped == 3
    assert keys(endpoint, bucket) == before


def test_s3_manifest_records_sizes_and_etags(
    sim: SimulatorThread, s3_bucket: tuple[str, str]
) -> None:
    """The month's manifest partition lists every object with the size and ETag S3 reports."""
    import json

    endpoint, bucket = s3_bucket
    assert harvest(sim.url, f"s3://{bucket}/m", feeds="urls", s3_endpoint_url=endpoint).ok
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        listed = keys(endpoint, bucket)
        assert [k for k in listed if k.startswith("m/_manifest/urls/")] == [
            "m/_manifest/urls/2024-01.json"
        ]
        body = client.get_object(Bucket=bucket, Key="m/_manifest/urls/2024-01.json")["Body"]
        partition = json.loads(body.read())
        data = sorted(k for k in listed if k.startswith("m/urls/"))
        assert sorted("m/" + f["key"] for f in partition["files"]) == data
        for f in partition["files"]:
            head = client.head_object(Bucket=bucket, Key="m/" + f["key"])
            assert head["ContentLength"] == f["size"]
            assert head["ETag"].strip('"') == f["version"]
    finally:
        client.close()


def test_s3_lake_is_exact_when_uploads_fail(
    sim: SimulatorThread, flaky_s3: tuple[str, str, object]
) -> None:
    """With a share of S3 uploads failing (503, 500, resets), the lake is still exact."""
    endpoint, bucket, stats = flaky_s3
    out = f"s3://{bucket}/flaky"
    feeds = ["paths", "network_streams"]
    result = harvest(
        sim.url, out, feeds=",".join(feeds), s3_endpoint_url=endpoint, confidence=0, severity=0
    )
    assert result.ok, result.failures
    assert stats.faults > 0  # type: ignore[attr-defined]
    truth = {f: sim.dataset.truth(f, START, END, confidence=0, severity=0) for f in feeds}
    assert_lake_exact(out, truth, con=duckdb_for_s3(endpoint))


def test_missing_bucket_is_a_clear_error_and_nothing_recorded(
    sim: SimulatorThread, s3_server: str
) -> None:
    """A bucket that does not exist stops the run, names the bucket, records nothing."""
    with pytest.raises(StorageAccessError, match="no-such-bucket-4711") as info:
        harvest(sim.url, "s3://no-such-bucket-4711/tg", feeds="ips", s3_endpoint_url=s3_server)
    assert "\n" not in str(info.value)
    client = boto3.client("s3", endpoint_url=s3_server)
    try:
        names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    finally:
        client.close()
    assert "no-such-bucket-4711" not in names
