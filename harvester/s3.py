"""The lake on S3 (or any S3-compatible service): :class:`S3Store`.

One boto3 client serves the whole run; every boto3 call runs on the store's own thread
pool, so the event loop keeps fetching while files upload. Credentials, region and
endpoint come from the standard AWS chain (``AWS_PROFILE``, ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3``, ...); ``--s3-endpoint-url`` wins over the environment.

S3 shows an object whole or not at all: a PUT, or a multipart upload once completed.
Conditional writes are S3's own: ``If-None-Match: *`` for :data:`~harvester.storage.ABSENT`
and ``If-Match: "etag"`` for a version, on PUT, on the completion of a multipart upload
and (``If-Match``) on DELETE. boto3's transfer manager passes neither header, so big
files are uploaded here by hand: one PUT below ``multipart_threshold``, above it a
multipart upload whose parts (``multipart_chunksize`` each, read from the staged file
one at a time, so memory stays bounded) go up concurrently on the store's pool, each
retried by the store's :class:`~harvester.retry.RetryPolicy`, then one conditional
completion. A failed upload is aborted (best effort: a bucket lifecycle rule for
incomplete multipart uploads is the backstop for a process that is killed).

botocore errors are mapped at this boundary: a condition that does not hold
(``412 PreconditionFailed``, ``409 ConditionalRequestConflict``, a missing object for
``If-Match``) becomes :class:`~harvester.errors.Conflict`; refused access, a missing
bucket or missing credentials :class:`~harvester.errors.StorageAccessError` (the run
stops); 5xx, throttling and broken connections
:class:`~harvester.errors.TransientStorageError` (retried on top of botocore's own
retries); anything else :class:`~harvester.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import boto3
import structlog
import urllib3.exceptions
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from harvester.errors import (
    ConfigError,
    Conflict,
    HarvesterError,
    StorageAccessError,
    StorageError,
    TransientStorageError,
)
from harvester.retry import RetryPolicy, Sleep, call_with_retry
from harvester.secret import guard_loggers, redact
from harvester.storage import (
    DEFAULT_MULTIPART_THRESHOLD,
    MIN_PART_SIZE,
    Absent,
    Blob,
    Expect,
    MiB,
    ObjectInfo,
    Store,
    local_error,
)

guard_loggers()

T = TypeVar("T")
PROBE_PREFIX = "_manifest/.write-probe-"

log = structlog.get_logger("harvester")

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ACCESS = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_CREDENTIALS = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired",
}  # fmt: skip
_TRANSIENT = {
    "SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "OperationAborted",
}  # fmt: skip
_CONNECTION = (
    BotoConnectionError, HTTPClientError, IncompleteReadError, urllib3.exceptions.HTTPError,
    ConnectionError, TimeoutError,
)  # fmt: skip
_REFUSED = {"PreconditionFailed", "ConditionalRequestConflict"}  # a condition did not hold
_MISSING = {"NoSuchKey", "404", "NotFound"}
_PART_CHECKSUMS = (
    "ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256",
)  # fmt: skip
MAX_PARTS = 10_000  # S3's limit on the parts of one upload
_BOUNDARY = (BotoCoreError, ClientError, Boto3Error, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class _Op:
    """What a call was doing: verb, IAM action and key (for messages), its condition."""

    verb: str
    action: str
    key: str = ""
    expect: Expect = None


@dataclass(frozen=True, kw_only=True)
class _Part:
    """An uploaded part: what the completion lists, and its MD5 (for the final ETag)."""

    entry: dict[str, Any]
    md5: bytes


class S3Store(Store):
    """A lake under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        max_workers: int = 16,
        botocore_attempts: int = 5,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int = 16 * MiB,
        transfer_concurrency: int = 4,
        staging_dir: str | None = None,
    ) -> None:
        _check_bucket(bucket)
        if multipart_threshold < MIN_PART_SIZE:
            raise ConfigError(
                f"--s3-multipart-threshold {multipart_threshold} is below S3's smallest part "
                f"({MIN_PART_SIZE} bytes, 5 MiB); use at least {MIN_PART_SIZE}"
            )
        if multipart_chunksize < MIN_PART_SIZE or transfer_concurrency < 1:
            raise ValueError("multipart parts must be at least 5 MiB, concurrency at least 1")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.policy = policy or RetryPolicy(attempts=6, timeout=120.0)
        self.retries = 0
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.transfer_concurrency = transfer_concurrency
        self._sleep = sleep
        self._staging_parent = staging_dir
        self._tmp: Path | None = None
        custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
        custom = custom or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"mode": "standard", "total_max_attempts": botocore_attempts},
            max_pool_connections=max_workers,  # parts run on the same pool as everything
            connect_timeout=10,
            read_timeout=60,
            # S3-compatible servers (MinIO, Ceph) often lack virtual hosts and the
            # newer default checksums; both settings are plain S3 as well
            s3={"addressing_style": "path"} if custom else None,
            request_checksum_calculation="when_required" if custom else None,
            response_checksum_validation="when_required" if custom else None,
        )
        try:
            # a private session: boto3's default session is shared and not thread-safe
            session = boto3.session.Session(region_name=region_name)
            self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        except ProfileNotFound as exc:
            raise ConfigError(f"{exc}; fix AWS_PROFILE or ~/.aws/config") from exc
        except (PartialCredentialsError, CredentialRetrievalError) as exc:
            # botocore resolves credentials when it builds the client
            raise self._error(exc, _Op("connecting", "")) from exc
        # As boto3's transfer manager does: where botocore adds checksums by default, a
        # multipart upload declares its algorithm, and the completion lists each part's.
        resolved = self._client.meta.config  # after the environment and ~/.aws/config
        checksums = getattr(resolved, "request_checksum_calculation", None) == "when_supported"
        self._part_checksum: dict[str, str] = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="s3")

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, **kwargs: Any) -> S3Store:
        """A store for ``s3://bucket/prefix`` (the prefix may be empty)."""
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"--out {url!r} has no bucket name; use s3://bucket/prefix")
        return cls(bucket, prefix, endpoint_url=endpoint_url, **kwargs)

    def url(self, key: str = "") -> str:
        """``s3://bucket/prefix/key``."""
        path = self._full(key)
        return f"s3://{self.bucket}/{path}" if path else f"s3://{self.bucket}"

    def _full(self, key: str) -> str:
        return "/".join(part for part in (self.prefix, key) if part)

    def _resource(self, op: _Op) -> str:
        if op.action == "s3:ListBucket":
            return f"arn:aws:s3:::{self.bucket}"
        return f"arn:aws:s3:::{self.bucket}/{self._full('*')}"

    def _local_dir(self) -> Path:
        """The run's local folder for staged uploads and fetched downloads."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="harvester-s3-", dir=self._staging_parent))
        return self._tmp

    @contextlib.asynccontextmanager
    async def staging(self, key: str) -> AsyncIterator[Path]:
        """A file in the store's temporary folder; removed on exit, success or not."""
        staged = self._local_dir() / f"{uuid.uuid4().hex[:12]}-{Path(key).name}"
        try:
            yield staged
        finally:
            await asyncio.to_thread(staged.unlink, missing_ok=True)

    def staging_error(self, exc: OSError, staged: Path) -> StorageError:
        """Staged files of an S3 lake live on a local disk: say so, it is not the bucket."""
        return local_error(
            exc,
            staged,
            where=f" (the local staging folder of this S3 run, {staged.parent}; set TMPDIR "
            "to a folder with room)",
        )

    async def read(self, key: str) -> Blob | None:
        """The object's bytes and ETag (from one GET: they agree), or ``None``."""

        def get() -> Blob | None:
            reply = self._get_object(key)
            if reply is None:
                return None
            with contextlib.closing(reply["Body"]) as body:
                data = bytes(body.read())
            return Blob(data=data, info=self._info(key, len(data), reply))

        return await self._call(_Op("reading", "s3:GetObject", key), get)

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        """One PUT, conditional on ``expect``: atomic and durable when it returns.

        A ``412`` raises :class:`~harvester.errors.Conflict`, also when it answers a PUT
        that botocore retried after the first attempt had in fact succeeded but its
        response was lost: the store cannot tell the two apart, and does not try. The
        caller's re-read then shows its own data, so re-read-and-retry stays correct.
        """

        def put() -> ObjectInfo:
            reply = self._client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, **_conditions(expect)
            )
            return self._info(key, len(data), reply)

        return await self._call(_Op("writing", "s3:PutObject", key, expect), put)

    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        """Upload the staged file, conditional on ``expect``: one PUT, or multipart when big.

        Below ``multipart_threshold`` it is one PUT, as :meth:`write` (a ``412`` after a
        lost response is a Conflict there too). A multipart upload is completed with the
        condition; any failure aborts it. When a completion's response is lost and the
        retry finds the upload gone (``NoSuchUpload``) or the condition failing, a HEAD
        tells whether the object now carries this upload's ETag (the MD5 of the parts'
        MD5s, ``-N``): then it did complete, and the commit succeeds.
        """
        try:
            size = (await asyncio.to_thread(staged.stat)).st_size
        except OSError as exc:
            raise self.staging_error(exc, staged) from exc
        if size < self.multipart_threshold:

            def put() -> ObjectInfo:
                with self._open_local(staged) as body:
                    reply = self._client.put_object(
                        Bucket=self.bucket, Key=self._full(key), Body=body, **_conditions(expect)
                    )
                return self._info(key, size, reply)

            return await self._call(_Op("writing", "s3:PutObject", key, expect), put)
        return await self._multipart(staged, key, size, expect)

    async def _multipart(self, staged: Path, key: str, size: int, expect: Expect) -> ObjectInfo:
        chunk = max(self.multipart_chunksize, -(-size // MAX_PARTS))
        count = -(-size // chunk)
        created = await self._call(
            _Op("writing", "s3:PutObject", key),
            functools.partial(
                self._client.create_multipart_upload,
                Bucket=self.bucket,
                Key=self._full(key),
                **self._part_checksum,
            ),
        )
        upload_id: str = created["UploadId"]
        try:
            parts = await self._upload_parts(staged, key, upload_id, size, chunk, count)
            return await self._complete(key, upload_id, parts, size, expect)
        except BaseException:
            await self._abort(key, upload_id)
            raise

    async def _upload_parts(
        self, staged: Path, key: str, upload_id: str, size: int, chunk: int, count: int
    ) -> builtins.list[_Part]:
        """Every part, ``transfer_concurrency`` at a time; after a failure none is begun."""
        gate = asyncio.Semaphore(self.transfer_concurrency)
        failures: builtins.list[BaseException] = []
        op = _Op("writing", "s3:PutObject", key)

        async def one(number: int) -> _Part | None:
            async with gate:
                if failures:
                    return None
                offset = (number - 1) * chunk
                upload = functools.partial(
                    self._upload_part, staged, key, upload_id, number, offset,
                    min(chunk, size - offset),
                )  # fmt: skip
                try:
                    return await self._call(op, upload)
                except BaseException as exc:
                    failures.append(exc)
                    raise

        # gather waits for every part in flight, so the abort that follows a failure
        # is not overtaken by a part still being uploaded
        results = await asyncio.gather(
            *(one(n) for n in range(1, count + 1)), return_exceptions=True
        )
        if failures:
            raise failures[0]
        return [r for r in results if isinstance(r, _Part)]

    def _upload_part(
        self, staged: Path, key: str, upload_id: str, number: int, offset: int, length: int
    ) -> _Part:
        """Read one part from the staged file (only that part in memory) and upload it."""
        with self._open_local(staged) as handle:
            try:
                handle.seek(offset)
                data = handle.read(length)
            except OSError as exc:
                raise self.staging_error(exc, staged) from exc
        if len(data) != length:
            raise StorageError(f"staged file {staged} changed size while it was uploaded")
        reply = self._client.upload_part(
            Bucket=self.bucket,
            Key=self._full(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            **self._part_checksum,
        )
        entry = {"PartNumber": number, "ETag": reply["ETag"]}
        entry.update({name: reply[name] for name in _PART_CHECKSUMS if reply.get(name)})
        return _Part(entry=entry, md5=hashlib.md5(data, usedforsecurity=False).digest())

    async def _complete(
        self, key: str, upload_id: str, parts: builtins.list[_Part], size: int, expect: Expect
    ) -> ObjectInfo:
        def complete() -> dict[str, Any] | str:
            try:
                reply: dict[str, Any] = self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [p.entry for p in parts]},
                    **_conditions(expect),
                )
            except ClientError as exc:
                code = _code(exc)
                if code in _REFUSED or code == "NoSuchUpload" or _status(exc) == 412:
                    return code or "412"
                if isinstance(expect, str) and code in _MISSING:
                    return code
                raise
            return reply

        outcome = await self._call(_Op("writing", "s3:PutObject", key), complete)
        if isinstance(outcome, dict):
            return self._info(key, size, outcome)
        # Refused. But if an earlier attempt completed the upload and only its response
        # was lost (botocore's retries or ours), the object now has this upload's ETag.
        digests = hashlib.md5(b"".join(p.md5 for p in parts), usedforsecurity=False)
        mine = f"{digests.hexdigest()}-{len(parts)}"
        head = await self._head(key)
        if head is not None and _etag(head) == mine and head.get("ContentLength") == size:
            log.info("s3.complete_confirmed", url=self.url(key), code=outcome, etag=mine)
            return ObjectInfo(key=key, size=size, version=mine, etag=mine)
        if expect is not None:
            raise Conflict(
                f"{self.url(key)} is not {_describe(expect)} ({outcome} completing the "
                "multipart upload)"
            )
        raise StorageError(
            f"S3 {outcome} completing the multipart upload of {self.url(key)}: the upload "
            "is gone and the object is not it; run the same command again"
        )

    async def _head(self, key: str) -> dict[str, Any] | None:
        def head() -> dict[str, Any] | None:
            try:
                reply: dict[str, Any] = self._client.head_object(
                    Bucket=self.bucket, Key=self._full(key)
                )
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise
            return reply

        return await self._call(_Op("reading", "s3:GetObject", key), head)

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort an upload, best effort: a failure is logged, never raised over the cause."""

        def abort() -> None:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._full(key), UploadId=upload_id
                )
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # already completed or aborted: fine
                    raise

        try:
            await self._call(_Op("aborting", "s3:AbortMultipartUpload", key), abort)
        except HarvesterError as exc:
            log.warning("s3.abort_failed", url=self.url(key), error=str(exc))

    def _open_local(self, path: Path, mode: str = "rb") -> BinaryIO:
        """Open a local staged or fetched file; its errors are the local disk's."""
        try:
            return cast(BinaryIO, open(path, mode))  # the caller closes it
        except OSError as exc:
            raise self.staging_error(exc, path) from exc

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> builtins.list[ObjectInfo]:
        """Objects in folder ``prefix``: sizes and ETags from ListObjectsV2 (``StartAfter``)."""
        folder = self._full(prefix.strip("/"))
        full = f"{folder}/" if folder else ""  # a folder, as on disk: "ips" is not "ips2/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        args = {"Bucket": self.bucket, "Prefix": full}
        if start_after is not None:
            args["StartAfter"] = self._full(start_after)

        def scan() -> builtins.list[ObjectInfo]:
            pages = self._client.get_paginator("list_objects_v2")
            found = []
            for page in pages.paginate(**args):
                for item in page.get("Contents", []):
                    name: str = item["Key"]
                    if not name.rsplit("/", 1)[-1].startswith("."):
                        etag = _etag(item) or ""
                        found.append(
                            ObjectInfo(key=name[strip:], size=item["Size"], version=etag, etag=etag)
                        )
            return sorted(found, key=lambda info: info.key)

        return await self._call(_Op("listing", "s3:ListBucket", prefix), scan)

    @contextlib.asynccontextmanager
    async def fetch(self, key: str) -> AsyncIterator[tuple[Path, ObjectInfo] | None]:
        """Download ``key`` (one streamed GET) into a local file removed on exit."""
        path = self._local_dir() / f"{uuid.uuid4().hex[:12]}-{Path(key).name}"
        try:
            info = await self._call(
                _Op("reading", "s3:GetObject", key), functools.partial(self._download, key, path)
            )
            yield None if info is None else (path, info)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def _get_object(self, key: str) -> Any:
        """``get_object``'s reply for ``key`` (blocking), or ``None`` if it does not exist."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def _download(self, key: str, path: Path) -> ObjectInfo | None:
        reply = self._get_object(key)
        if reply is None:
            return None
        size = 0
        with contextlib.closing(reply["Body"]) as body, self._open_local(path, "wb") as out:
            for chunk in body.iter_chunks(MiB):  # a retry starts the file afresh
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise self.staging_error(exc, path) from exc
                size += len(chunk)
        return self._info(key, size, reply)

    async def delete(self, key: str, *, expect: str | None = None) -> None:
        """Remove ``key`` (``If-Match`` when ``expect`` is given); missing keys are fine."""
        await self._call(
            _Op("deleting", "s3:DeleteObject", key, expect),
            functools.partial(
                self._client.delete_object,
                Bucket=self.bucket,
                Key=self._full(key),
                **_conditions(expect),
            ),
        )

    async def check_writable(self) -> None:
        """The bucket exists and a probe object can be written and removed."""
        await self._call(
            _Op("checking", "s3:ListBucket"),
            functools.partial(self._client.head_bucket, Bucket=self.bucket),
        )
        probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        await self.write(probe, b"")
        await self.delete(probe)

    async def close(self) -> None:
        """Wait for running calls, close the client's connections, drop local files."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._client.close()
        if self._tmp is not None:
            await asyncio.to_thread(shutil.rmtree, self._tmp, ignore_errors=True)
            self._tmp = None

    def _info(self, key: str, size: int, reply: dict[str, Any]) -> ObjectInfo:
        etag = _etag(reply)
        if etag is None:
            raise StorageError(f"S3 returned no ETag for {self.url(key)}; is it S3-compatible?")
        return ObjectInfo(key=key, size=size, version=etag, etag=etag)

    async def _call(self, op: _Op, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the pool, map its errors, retry the transient ones."""

        async def attempt() -> T:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._executor, fn)
            except _BOUNDARY as exc:
                raise self._error(exc, op) from exc

        def on_retry(error: BaseException, attempt_number: int, delay: float) -> None:
            self.retries += 1
            log.warning("s3.retry", url=self.url(op.key), error=str(error), attempt=attempt_number)

        return await call_with_retry(attempt, self.policy, sleep=self._sleep, on_retry=on_retry)

    def _error(self, exc: BaseException, op: _Op) -> HarvesterError:
        """The harvester error for a boto3/botocore failure during ``op``."""
        where = self.url(op.key)
        if isinstance(exc, NoCredentialsError):
            return StorageAccessError(
                "no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, PartialCredentialsError | CredentialRetrievalError):
            return StorageAccessError(
                f"AWS credentials are incomplete or unreadable ({exc}); set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ClientError):
            code = _code(exc)
            status = _status(exc)
            bucket_level = op.action == "s3:ListBucket"
            if code == "NoSuchBucket" or (bucket_level and code in {"404", "NotFound"}):
                return StorageAccessError(
                    f"bucket {self.bucket!r} does not exist ({self.url()}); create it or fix --out"
                )
            if op.expect is not None and (code in _REFUSED or status == 412):
                return Conflict(f"{where} is not {_describe(op.expect)} ({code or status})")
            if isinstance(op.expect, str) and code in _MISSING:
                return Conflict(f"{where} does not exist; expected version {op.expect}")
            if code in _ACCESS:
                return StorageAccessError(
                    f"access denied {op.verb} {where}: the job needs {op.action} on "
                    f"{self._resource(op)}"
                )
            if code in _CREDENTIALS:
                return StorageAccessError(
                    f"S3 refused the AWS credentials ({code}) for {self.url()}; fix AWS_PROFILE "
                    "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                )
            detail = redact(exc.response.get("Error", {}).get("Message") or code)
            if code in _TRANSIENT or status >= 500 or status == 429:
                return TransientStorageError(f"S3 {code} {op.verb} {where}: {detail}")
            return StorageError(f"S3 {code} {op.verb} {where}: {detail}")
        detail = redact(str(exc)) or type(exc).__name__
        if isinstance(exc, _CONNECTION):
            return TransientStorageError(f"S3 connection failed {op.verb} {where}: {detail}")
        return StorageError(f"S3 failed {op.verb} {where}: {detail}")


def _check_bucket(bucket: str) -> None:
    if not _BUCKET.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
        raise ConfigError(
            f"S3 bucket name {bucket!r} is not valid; bucket names are 3-63 lowercase letters, "
            "digits, dots and hyphens (fix --out s3://bucket/prefix)"
        )


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _conditions(expect: Expect) -> dict[str, str]:
    """The request headers (boto3 parameters) for ``expect``."""
    if isinstance(expect, Absent):
        return {"IfNoneMatch": "*"}
    if expect is not None:
        return {"IfMatch": f'"{expect}"'}  # an entity tag is quoted (RFC 9110)
    return {}


def _describe(expect: Expect) -> str:
    return "absent" if isinstance(expect, Absent) else f"version {expect}"


def _etag(reply: dict[str, Any]) -> str | None:
    etag = reply.get("ETag")
    return str(etag).strip('"') if etag else None
