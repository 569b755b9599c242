"""S3Store against a real S3 protocol server (moto on loopback) and a faulty proxy.

Conditional writes: what moto 5.2.5 checks decides what these tests can prove. It checks
``If-None-Match: *`` on PutObject and on CompleteMultipartUpload, and ``If-Match`` on
PutObject and DeleteObject (404 NoSuchKey when the object is missing). It does NOT check
``If-Match`` on CompleteMultipartUpload (so the proxy plays real S3's 412 there, and a
test records that the header is sent), it answers a repeated completion of the upload
that made the current object with success, and it checks conditions without a lock
(atomicity under races is tested on local disk and on ``tests/memstore.py``).
"""

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

from harvester.errors import (
    ConfigError,
    Conflict,
    StorageAccessError,
    StorageError,
    TransientStorageError,
)
from harvester.retry import RetryPolicy
from harvester.s3 import MiB, S3Store
from harvester.storage import ABSENT, Expect, ObjectInfo, open_store

from s3_server import FaultProxy, admin_client, is_complete

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


async def stage_and_commit(store: S3Store, key: str, data: bytes, expect: Expect = None) -> Any:
    async with store.staging(key) as staged:
        staged.write_bytes(data)
        return await store.commit(staged, key, expect=expect)


def multipart_etag(data: bytes, part: int = 5 * MiB) -> str:
    """S3's ETag of a multipart upload: MD5 of the parts' MD5s, then -N."""
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def multipart_store(endpoint: str, bucket: str, **knobs: Any) -> S3Store:
    """A store that uploads 5 MiB and more in 5 MiB parts (S3's smallest)."""
    return make_store(
        endpoint, bucket, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, **knobs
    )


def test_from_url_validates_and_builds_urls(s3_server: str) -> None:
    """Bad s3:// URLs are ConfigErrors; keys join under the prefix; open_store picks S3."""
    for bad in ("s3://", "s3:///lake", "s3://Bad_Bucket/lake", "s3://ab/x", "s3://10.0.0.1/x"):
        with pytest.raises(ConfigError, match="bucket"):
            S3Store.from_url(bad)
    with pytest.raises(ConfigError, match="--s3-multipart-threshold 5242879 is below"):
        S3Store.from_url("s3://my-bucket/x", multipart_threshold=5 * MiB - 1)
    store = open_store(
        "s3://my-bucket/tg/lake/",
        s3_endpoint_url="http://127.0.0.1:9",
        multipart_threshold=7 * MiB,
    )
    assert isinstance(store, S3Store)
    assert store.multipart_threshold == 7 * MiB
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
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """Through a proxy failing ~30% of uploads every object lands exact, nothing left open.

    Every PUT and POST may fail: small PUTs, multipart creation, parts and completions,
    with 5xx, a reset before the request reaches S3, or a lost response after it was
    applied. Parts go up 4 at a time. The faults drawn depend only on the seed (each
    phase runs until a fixed number of successes), so the fault mix asserted is stable.
    """
    endpoint, bucket = s3_bucket
    # seed 6 draws, among others, a lost part response and a lost completion response
    proxy = fault_proxy(kinds=("slowdown", "internal", "reset", "lost"), seed=6)
    small = {f"_manifest/ips/{i}.json": os.urandom(100 + i) for i in range(12)}
    files = {
        "ips/a.parquet": os.urandom(300_000),
        "ips/big.parquet": os.urandom(11 * MiB),
        "ips/bigger.parquet": os.urandom(12 * MiB + 1),
        "domains/big.parquet": os.urandom(10 * MiB),
    }
    patient = RetryPolicy(attempts=40, timeout=60.0, initial=0.0, maximum=0.01, jitter=0.0)
    store = multipart_store(proxy.url, bucket, policy=patient, botocore_attempts=1)

    async def scenario(s: S3Store) -> None:
        await asyncio.gather(*(s.put_bytes(k, v) for k, v in small.items()))
        for key, data in files.items():
            # a lost response to a conditional single PUT ends in a Conflict (by design),
            # but a multipart completion is confirmed by its ETag: ABSENT is safe there
            expect = ABSENT if len(data) >= 5 * MiB else None
            stored = await stage_and_commit(s, key, data, expect)
            assert stored.size == len(data)

    run(store, scenario)
    expected = {f"lake/{k}": v for k, v in {**small, **files}.items()}
    assert objects(endpoint, bucket) == expected
    stats = proxy.stats
    # The one upload a run cannot abort: one whose CreateMultipartUpload was applied but
    # its response lost, so its id never reached the store (the retry made another).
    # It holds no part; a bucket lifecycle rule removes it (README).
    lost_creates = [f for f in stats.faulted if f.startswith("lost POST") and "?uploads" in f]
    left = open_uploads(endpoint, bucket)
    assert len(left) == len(lost_creates)
    with admin_client(endpoint) as client:
        for upload in left:
            parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            assert parts.get("Parts", []) == []
    assert 0 < store.retries <= stats.faults
    assert any(" PUT " in f and "partNumber=" in f for f in stats.faulted), "parts failed"
    assert any(f.startswith("lost POST") and "uploadId=" in f for f in stats.faulted)


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


def test_multipart_round_trip_of_12_mib(s3_bucket: tuple[str, str]) -> None:
    """A ~12 MiB synthetic file goes up in three 5 MiB parts and comes back identical.

    The version is the multipart ETag computed locally; read, fetch and list agree on it.
    """
    endpoint, bucket = s3_bucket
    data = os.urandom(12 * MiB + 4321)

    async def scenario(s: S3Store) -> ObjectInfo:
        info = await stage_and_commit(s, "ips/dt=2024-01-01/part.parquet", data, ABSENT)
        async with s.fetch("ips/dt=2024-01-01/part.parquet") as fetched:
            assert fetched is not None
            path, got = fetched
            assert got == info
            assert path.read_bytes() == data
        assert not path.exists()
        blob = await s.read("ips/dt=2024-01-01/part.parquet")
        assert blob is not None
        assert (blob.data == data, blob.info) == (True, info)
        assert await s.list("ips") == [info]
        return info

    info = run(multipart_store(endpoint, bucket), scenario)
    assert info.size == len(data)
    assert info.version == info.etag == multipart_etag(data)
    assert objects(endpoint, bucket) == {"lake/ips/dt=2024-01-01/part.parquet": data}
    assert open_uploads(endpoint, bucket) == []


def test_conditional_multipart_completion(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """The completion carries the condition; If-None-Match is refused by moto itself.

    A refused completion is a Conflict, its upload is aborted and the object unchanged.
    moto does not check If-Match on a completion, so the test checks the header sent.
    """
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(match=is_complete, plan=())  # forwards all, records headers
    first, second, third = (os.urandom(11 * MiB) for _ in range(3))

    async def scenario(s: S3Store) -> None:
        v1 = await stage_and_commit(s, "day.parquet", first, ABSENT)
        with pytest.raises(Conflict, match="is not absent"):
            await stage_and_commit(s, "day.parquet", second, ABSENT)
        v3 = await stage_and_commit(s, "day.parquet", third, v1.version)
        assert v3.version == multipart_etag(third)

    run(multipart_store(proxy.url, bucket), scenario)
    assert objects(endpoint, bucket) == {"lake/day.parquet": third}
    assert open_uploads(endpoint, bucket) == []
    sent = [headers for method, _, headers in proxy.stats.headers if method == "POST"]
    assert [h.get("If-None-Match") for h in sent] == ["*", "*", None]
    assert sent[2].get("If-Match") == f'"{multipart_etag(first)}"'


def test_refused_if_match_completion_is_a_conflict(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """A stale If-Match completion: a Conflict, the upload aborted, the object unchanged.

    Real S3 answers it with 412; moto does not check, so the proxy plays S3.
    """
    endpoint, bucket = s3_bucket
    with admin_client(endpoint) as client:
        client.put_object(Bucket=bucket, Key="lake/day.parquet", Body=b"current")
    proxy = fault_proxy(match=is_complete, plan=("precondition",))

    async def scenario(s: S3Store) -> None:
        with pytest.raises(Conflict, match="PreconditionFailed completing"):
            await stage_and_commit(s, "day.parquet", os.urandom(6 * MiB), "0123stale")

    run(multipart_store(proxy.url, bucket), scenario)
    assert objects(endpoint, bucket) == {"lake/day.parquet": b"current"}
    assert open_uploads(endpoint, bucket) == []


@pytest.mark.parametrize(
    "plan",
    [
        ("lost",),  # moto answers the retry with success (idempotent completion)
        ("lost", "nosuchupload"),  # S3 may answer the retry: the upload is gone
        ("lost", "precondition"),  # or: If-None-Match fails, against our own object
        ("reset", "lost"),  # not sent, then sent and lost
    ],
)
def test_lost_completion_response_ends_in_success(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy], plan: tuple[str, ...]
) -> None:
    """A completion applied but its response lost: the commit still succeeds.

    Whatever the retry meets (success, NoSuchUpload, 412), the object's ETag is checked
    against the one computed locally from the parts.
    """
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(match=is_complete, plan=plan)
    data = os.urandom(12 * MiB)
    store = multipart_store(proxy.url, bucket, botocore_attempts=1)
    info = run(store, lambda s: stage_and_commit(s, "day.parquet", data, ABSENT))
    assert info.version == multipart_etag(data)
    assert objects(endpoint, bucket) == {"lake/day.parquet": data}
    assert open_uploads(endpoint, bucket) == []
    assert proxy.stats.faults == len(plan)
    assert store.retries == len(plan) if plan[-1] == "lost" else len(plan) - 1


@pytest.mark.parametrize(
    ("plan", "expect", "error"),
    [
        (("nosuchupload",), None, StorageError),
        (("nosuchupload",), ABSENT, Conflict),
    ],
)
def test_vanished_upload_is_not_taken_for_success(
    s3_bucket: tuple[str, str],
    fault_proxy: Callable[..., FaultProxy],
    plan: tuple[str, ...],
    expect: Expect,
    error: type[Exception],
) -> None:
    """NoSuchUpload when the object does not carry this upload's ETag is a failure."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(match=is_complete, plan=plan)
    with pytest.raises(error, match="NoSuchUpload completing"):
        run(
            multipart_store(proxy.url, bucket),
            lambda s: stage_and_commit(s, "day.parquet", os.urandom(6 * MiB), expect),
        )
    assert objects(endpoint, bucket) == {}
    assert open_uploads(endpoint, bucket) == []


def test_failing_completion_is_aborted(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """When every completion fails, the commit raises and no upload is left open."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(rate=1.0, kinds=("internal", "reset"), match=is_complete)
    store = multipart_store(proxy.url, bucket, botocore_attempts=1)
    with pytest.raises(TransientStorageError):
        run(store, lambda s: stage_and_commit(s, "day.parquet", os.urandom(11 * MiB)))
    assert proxy.stats.faults == FAST.attempts
    assert open_uploads(endpoint, bucket) == []
    assert objects(endpoint, bucket) == {}
