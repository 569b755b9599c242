"""S3Store against a real S3 protocol server (moto on loopback) and a faulty proxy."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from harvester.errors import ConfigError, StorageAccessError, TransientStorageError
from harvester.retry import RetryPolicy
from harvester.s3 import MiB, S3Store
from harvester.storage import open_store

from s3_server import FaultProxy, ProxyStats, admin_client

FAST = RetryPolicy(attempts=3, timeout=30.0, initial=0.01, maximum=0.02, jitter=0.0)


def make_store(endpoint: str, bucket: str, prefix: str = "lake", **knobs: Any) -> S3Store:
    knobs.setdefault("policy", FAST)
    return S3Store(bucket, prefix, endpoint_url=endpoint, **knobs)


def run(store: S3Store, scenario: Callable[[S3Store], Awaitable[Any]]) -> Any:
    """Run ``scenario(store)`` in a fresh event loop and always close the store."""

    async def main() -> Any:
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    with admin_client(endpoint) as client:
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
                with body:
                    found[item["Key"]] = body.read()
        return found


def open_uploads(endpoint: str, bucket: str) -> list[Any]:
    with admin_client(endpoint) as client:
        return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


async def stage_and_commit(store: S3Store, key: str, data: bytes) -> Any:
    async with store.staging(key) as staged:
        staged.write_bytes(data)
        return await store.commit(staged, key)


def test_from_url_validates_and_builds_urls(s3_server: str) -> None:
    """Bad s3:// URLs are ConfigErrors; keys join under the prefix; open_store picks S3."""
    for bad in ("s3://", "s3:///lake", "s3://Bad_Bucket/lake", "s3://ab/x", "s3://10.0.0.1/x"):
        with pytest.raises(ConfigError, match="bucket"):
            S3Store.from_url(bad)
    store = open_store("s3://my-bucket/tg/lake/", s3_endpoint_url="http://127.0.0.1:9")
    assert isinstance(store, S3Store)
    assert store.url("ips/a.parquet") == "s3://my-bucket/tg/lake/ips/a.parquet"
    bare = S3Store.from_url("s3://my-bucket")
    assert bare.url("k") == "s3://my-bucket/k"
    assert bare.url() == "s3://my-bucket"
    asyncio.run(store.close())
    asyncio.run(bare.close())


def test_put_get_list_delete_round_trip(s3_bucket: tuple[str, str]) -> None:
    """Small objects round-trip; listing is relative, sorted, prefix-exact, dot-free."""
    endpoint, bucket = s3_bucket
    with admin_client(endpoint) as client:
        client.put_object(Bucket=bucket, Key="lake2/ips/x.json", Body=b"other lake")
        client.put_object(Bucket=bucket, Key="lake/ips/.hidden", Body=b"dot")

    async def scenario(store: S3Store) -> None:
        stored = await store.put_bytes("ips/b.json", b"bee")
        assert (stored.key, stored.size) == ("ips/b.json", 3)
        assert stored.etag == hashlib.md5(b"bee").hexdigest()
        await store.put_bytes("ips/a.json", b"ay")
        await store.put_bytes("domains/c.json", b"")
        await store.put_bytes("ips2/d.json", b"d")
        assert await store.list_keys("ips") == await store.list_keys("ips/")
        assert await store.get_bytes("ips/b.json") == b"bee"
        assert await store.get_bytes("domains/c.json") == b""
        assert await store.get_bytes("ips/missing.json") is None
        assert await store.list_keys("ips/") == ["ips/a.json", "ips/b.json"]
        everything = ["domains/c.json", "ips/a.json", "ips/b.json", "ips2/d.json"]
        assert await store.list_keys("") == everything
        assert await store.list_keys("nothing/") == []
        await store.delete("ips/a.json")
        await store.delete("ips/a.json")  # idempotent
        assert await store.list_keys("ips/") == ["ips/b.json"]

    run(make_store(endpoint, bucket), scenario)
    assert set(objects(endpoint, bucket)) == {
        "lake/ips/b.json",
        "lake/domains/c.json",
        "lake/ips2/d.json",
        "lake/ips/.hidden",
        "lake2/ips/x.json",
    }


def test_commit_single_part_records_size_and_etag(s3_bucket: tuple[str, str]) -> None:
    """A staged file is uploaded whole; size/ETag match; the staged file is then gone."""
    endpoint, bucket = s3_bucket
    data = os.urandom(MiB + 17)
    seen: list[Any] = []

    async def scenario(store: S3Store) -> Any:
        async with store.staging("ips/dt=2024-01-01/part.parquet") as staged:
            seen.append(staged)
            staged.write_bytes(data)
            stored = await store.commit(staged, "ips/dt=2024-01-01/part.parquet")
        assert not staged.exists()
        return stored

    stored = run(make_store(endpoint, bucket), scenario)
    assert stored.size == len(data)
    assert stored.etag == hashlib.md5(data).hexdigest()
    assert objects(endpoint, bucket) == {"lake/ips/dt=2024-01-01/part.parquet": data}
    assert not seen[0].parent.exists(), "close() removes the staging folder"


def test_commit_multipart(s3_bucket: tuple[str, str]) -> None:
    """An 11 MiB file above a 5 MiB threshold goes up in 3 parts and arrives exact."""
    endpoint, bucket = s3_bucket
    data = os.urandom(11 * MiB)
    store = make_store(endpoint, bucket, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    stored = run(store, lambda s: stage_and_commit(s, "big.bin", data))
    assert stored.size == len(data)
    assert stored.etag.endswith("-3")
    assert objects(endpoint, bucket) == {"lake/big.bin": data}
    assert open_uploads(endpoint, bucket) == []


def test_staged_file_removed_on_failure(s3_bucket: tuple[str, str]) -> None:
    """A failure inside staging, or a failed commit, still removes the staged file."""
    endpoint, bucket = s3_bucket
    paths = []

    async def crash(store: S3Store) -> None:
        async with store.staging("a.parquet") as staged:
            paths.append(staged)
            staged.write_bytes(b"half")
            raise RuntimeError("writer died")

    async def refused(store: S3Store) -> None:
        async with store.staging("b.parquet") as staged:
            paths.append(staged)
            staged.write_bytes(b"whole")
            await store.commit(staged, "b.parquet")

    with admin_client(endpoint) as client:
        client.create_bucket(Bucket=f"{bucket}-gone")
        client.delete_bucket(Bucket=f"{bucket}-gone")
    with pytest.raises(RuntimeError, match="writer died"):
        run(make_store(endpoint, bucket), crash)
    with pytest.raises(StorageAccessError, match="does not exist"):
        run(make_store(endpoint, f"{bucket}-gone"), refused)
    assert len(paths) == 2
    assert not any(p.exists() for p in paths)


def test_check_writable_leaves_nothing(s3_bucket: tuple[str, str]) -> None:
    """The write probe is written and removed: the bucket stays empty."""
    endpoint, bucket = s3_bucket
    run(make_store(endpoint, bucket), lambda s: s.check_writable())
    assert objects(endpoint, bucket) == {}


def test_missing_bucket_is_access_error(s3_server: str) -> None:
    """A bucket that does not exist stops the run with a message naming it; no retries."""
    store = make_store(s3_server, "no-such-bucket-here")
    with pytest.raises(StorageAccessError, match="bucket 'no-such-bucket-here' does not exist"):
        run(store, lambda s: s.check_writable())
    store = make_store(s3_server, "no-such-bucket-here")
    with pytest.raises(StorageAccessError, match=r"s3://no-such-bucket-here/lake\); create it"):
        run(store, lambda s: s.put_bytes("k", b"v"))
    assert store.retries == 0


def test_no_credentials(
    s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """No credentials anywhere, or half of them, is an access error that leaks nothing."""
    endpoint, bucket = s3_bucket
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageAccessError, match="no AWS credentials found; set AWS_PROFILE"):
        run(make_store(endpoint, bucket), lambda s: s.put_bytes("k", b"v"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjEJr-very-secret")
    with pytest.raises(StorageAccessError, match="incomplete") as caught:
        run(make_store(endpoint, bucket), lambda s: s.get_bytes("k"))
    assert "very-secret" not in str(caught.value)


def test_denied_and_refused_keys_via_proxy(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """403 AccessDenied names the missing permission; InvalidAccessKeyId the fix; no retry."""
    _, bucket = s3_bucket
    denied = fault_proxy(rate=1.0, kinds=("denied",))
    store = make_store(denied.url, bucket)
    message = rf"access denied writing s3://{bucket}/lake/ips/x: the job needs s3:PutObject on "
    with pytest.raises(StorageAccessError, match=message + rf"arn:aws:s3:::{bucket}/lake/\*"):
        run(store, lambda s: s.put_bytes("ips/x", b"v"))
    assert denied.stats.faults == 1
    refused = fault_proxy(rate=1.0, kinds=("badkey",))
    with pytest.raises(StorageAccessError, match="refused the AWS credentials"):
        run(make_store(refused.url, bucket), lambda s: s.check_writable())


def test_unreachable_endpoint_is_transient(s3_bucket: tuple[str, str]) -> None:
    """A refused connection is a transient error, retried by the policy, then raised."""
    _, bucket = s3_bucket
    store = make_store("http://127.0.0.1:9", bucket, botocore_attempts=1)
    with pytest.raises(TransientStorageError, match="connection failed"):
        run(store, lambda s: s.put_bytes("k", b"v"))
    assert store.retries == FAST.attempts - 1


def test_flaky_uploads_succeed_exactly(
    flaky_s3: tuple[str, str, ProxyStats], s3_bucket: tuple[str, str]
) -> None:
    """Through a proxy failing ~30% of uploads (5xx, resets) every object lands exact."""
    endpoint, bucket, stats = flaky_s3
    small = {f"_manifest/ips/{i}.json": os.urandom(100 + i) for i in range(12)}
    files = {"ips/a.parquet": os.urandom(300_000), "ips/big.parquet": os.urandom(11 * MiB)}
    patient = RetryPolicy(attempts=40, timeout=60.0, initial=0.0, maximum=0.01, jitter=0.0)
    store = make_store(
        endpoint,
        bucket,
        policy=patient,
        botocore_attempts=1,
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
        transfer_concurrency=1,
    )

    async def scenario(s: S3Store) -> None:
        await asyncio.gather(*(s.put_bytes(k, v) for k, v in small.items()))
        for key, data in files.items():
            stored = await stage_and_commit(s, key, data)
            assert stored.size == len(data)

    run(store, scenario)
    expected = {f"lake/{k}": v for k, v in {**small, **files}.items()}
    assert objects(s3_bucket[0], bucket) == expected
    assert open_uploads(s3_bucket[0], bucket) == []
    assert stats.faults > 0
    assert 0 < store.retries <= stats.faults


def test_failed_multipart_upload_is_aborted(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """When every part upload fails, the commit raises and no partial upload remains."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(
        rate=1.0, kinds=("internal",), match=lambda method, path: "partNumber=" in path
    )
    store = make_store(
        proxy.url,
        bucket,
        policy=RetryPolicy(attempts=2, timeout=30.0, initial=0.0, maximum=0.0, jitter=0.0),
        botocore_attempts=1,
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
    )
    with pytest.raises(TransientStorageError, match="InternalError writing"):
        run(store, lambda s: stage_and_commit(s, "big.bin", os.urandom(11 * MiB)))
    assert proxy.stats.faults >= 2
    assert open_uploads(endpoint, bucket) == []
    assert objects(endpoint, bucket) == {}


def test_pyarrow_reads_committed_parquet(s3_bucket: tuple[str, str]) -> None:
    """An independent reader (pyarrow's S3 filesystem) sees a Parquet file S3Store committed."""
    endpoint, bucket = s3_bucket
    table = pa.table({"ip": ["10.0.0.1", "10.0.0.2"], "score": [90, 75]})

    async def scenario(store: S3Store) -> None:
        async with store.staging("ips/dt=2024-01-01/part.parquet") as staged:
            await asyncio.to_thread(pq.write_table, table, staged)
            await store.commit(staged, "ips/dt=2024-01-01/part.parquet")

    run(make_store(endpoint, bucket), scenario)
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )
    read = pq.read_table(f"{bucket}/lake/ips/dt=2024-01-01/part.parquet", filesystem=fs)
    assert read.equals(table)
