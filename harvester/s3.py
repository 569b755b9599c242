"""The lake on S3 (or any S3-compatible service): :class:`S3Store`.

One boto3 client serves the whole run; every boto3 call runs on the store's own thread
pool, so the event loop keeps fetching while files upload. Credentials, region and
endpoint come from the standard AWS chain (``AWS_PROFILE``, ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3``, ...); ``--s3-endpoint-url`` wins over the environment.

Large files are staged in a local temporary folder and uploaded by boto3's transfer
manager (multipart above ``multipart_threshold``). S3 shows an object whole or not at
all: a PUT, or a multipart upload once completed; a failed multipart upload is
aborted by the transfer manager.

botocore errors are mapped at this boundary: refused access, a missing bucket or
missing credentials become :class:`~harvester.errors.StorageAccessError` (the run
stops), 5xx, throttling and broken connections become
:class:`~harvester.errors.TransientStorageError` (retried on top of botocore's own
retries), anything else :class:`~harvester.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import structlog
import urllib3.exceptions
from boto3.exceptions import Boto3Error, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from harvester.errors import (
    ConfigError,
    HarvesterError,
    StorageAccessError,
    StorageError,
    TransientStorageError,
)
from harvester.retry import RetryPolicy, Sleep, call_with_retry
from harvester.secret import redact
from harvester.storage import ObjectInfo, Store, StoredFile

T = TypeVar("T")
MiB = 1024 * 1024
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
    BotoConnectionError, HTTPClientError, urllib3.exceptions.HTTPError, ConnectionError,
    TimeoutError,
)  # fmt: skip
_BOUNDARY = (BotoCoreError, ClientError, Boto3Error, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class _Op:
    """What a call was doing, for error messages: verb, IAM action, object key."""

    verb: str
    action: str
    key: str = ""


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
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        transfer_concurrency: int = 4,
        staging_dir: str | None = None,
    ) -> None:
        _check_bucket(bucket)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.policy = policy or RetryPolicy(attempts=6, timeout=120.0)
        self.retries = 0
        self._sleep = sleep
        self._staging_parent = staging_dir
        self._tmp: Path | None = None
        custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
        custom = custom or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"mode": "standard", "total_max_attempts": botocore_attempts},
            # each worker thread may run a multipart upload with its own part threads
            max_pool_connections=max_workers * max(transfer_concurrency, 1),
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
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=transfer_concurrency,
            preferred_transfer_client="classic",
        )
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

    @contextlib.asynccontextmanager
    async def staging(self, key: str) -> AsyncIterator[Path]:
        """A file in the store's temporary folder; removed on exit, success or not."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="harvester-s3-", dir=self._staging_parent))
        staged = self._tmp / f"{uuid.uuid4().hex[:12]}-{Path(key).name}"
        try:
            yield staged
        finally:
            await asyncio.to_thread(staged.unlink, missing_ok=True)

    async def commit(self, staged: Path, key: str) -> StoredFile:
        """Upload the staged file (multipart when big) and record its size and ETag."""
        full = self._full(key)
        upload = functools.partial(
            self._client.upload_file, str(staged), self.bucket, full, Config=self._transfer
        )
        await self._call(_Op("writing", "s3:PutObject", key), upload)
        # the transfer manager returns nothing; S3 has the final ETag (multipart: md5-N)
        head = await self._call(
            _Op("reading", "s3:GetObject", key),
            functools.partial(self._client.head_object, Bucket=self.bucket, Key=full),
        )
        return StoredFile(key=key, size=head["ContentLength"], etag=_etag(head))

    async def put_bytes(self, key: str, data: bytes) -> StoredFile:
        """One PUT: atomic and durable when it returns."""

        def put() -> StoredFile:
            reply = self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)
            return StoredFile(key=key, size=len(data), etag=_etag(reply))

        return await self._call(_Op("writing", "s3:PutObject", key), put)

    async def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` if there is no such key."""

        def get() -> bytes | None:
            try:
                reply = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            except ClientError as exc:
                if _code(exc) in {"NoSuchKey", "404", "NotFound"}:
                    return None
                raise
            with contextlib.closing(reply["Body"]) as body:
                return bytes(body.read())

        return await self._call(_Op("reading", "s3:GetObject", key), get)

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys in folder ``prefix``, relative to the store, sorted; dot-files skipped."""
        folder = self._full(prefix.strip("/"))
        full = f"{folder}/" if folder else ""  # a folder, as on disk: "ips" is not "ips2/"
        strip = len(self.prefix) + 1 if self.prefix else 0

        def scan() -> list[str]:
            pages = self._client.get_paginator("list_objects_v2")
            keys = []
            for page in pages.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    name: str = item["Key"]
                    if not name.rsplit("/", 1)[-1].startswith("."):
                        keys.append(name[strip:])
            return sorted(keys)

        return await self._call(_Op("listing", "s3:ListBucket", prefix), scan)

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Objects in folder ``prefix`` with size and ETag, sorted; dot-files skipped."""
        folder = self._full(prefix.strip("/"))
        full = f"{folder}/" if folder else ""
        strip = len(self.prefix) + 1 if self.prefix else 0

        def scan() -> builtins.list[ObjectInfo]:
            pages = self._client.get_paginator("list_objects_v2")
            found = []
            for page in pages.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    name: str = item["Key"]
                    if not name.rsplit("/", 1)[-1].startswith("."):
                        etag = _etag(item) or ""
                        found.append(
                            ObjectInfo(
                                key=name[strip:], size=int(item["Size"]), version=etag, etag=etag
                            )
                        )
            return sorted(found, key=lambda info: info.key)

        return await self._call(_Op("listing", "s3:ListBucket", prefix), scan)

    @contextlib.asynccontextmanager
    async def fetch(self, key: str) -> AsyncIterator[tuple[Path, ObjectInfo] | None]:
        """Download ``key`` (one streamed GET) into a local file removed on exit."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="harvester-s3-", dir=self._staging_parent))
        path = self._tmp / f"{uuid.uuid4().hex[:12]}-{Path(key).name}"
        full = self._full(key)

        def download() -> ObjectInfo | None:
            # One streamed GET: the bytes and the version named are the same object.
            try:
                reply = self._client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _code(exc) in {"NoSuchKey", "404", "NotFound"}:
                    return None
                raise
            size = 0
            with contextlib.closing(reply["Body"]) as body, open(path, "wb") as out:
                for chunk in body.iter_chunks(MiB):  # a retry starts the file afresh
                    out.write(chunk)
                    size += len(chunk)
            etag = _etag(reply) or ""
            return ObjectInfo(key=key, size=size, version=etag, etag=etag)

        try:
            info = await self._call(_Op("reading", "s3:GetObject", key), download)
            yield None if info is None else (path, info)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def delete(self, key: str) -> None:
        """Remove ``key``; S3 deletes of missing keys succeed too."""
        await self._call(
            _Op("deleting", "s3:DeleteObject", key),
            functools.partial(self._client.delete_object, Bucket=self.bucket, Key=self._full(key)),
        )

    async def check_writable(self) -> None:
        """The bucket exists and a probe object can be written and removed."""
        await self._call(
            _Op("checking", "s3:ListBucket"),
            functools.partial(self._client.head_bucket, Bucket=self.bucket),
        )
        probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        await self.put_bytes(probe, b"")
        await self.delete(probe)

    async def close(self) -> None:
        """Wait for running calls, close the client's connections, drop staging files."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._client.close()
        if self._tmp is not None:
            await asyncio.to_thread(shutil.rmtree, self._tmp, ignore_errors=True)
            self._tmp = None

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
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # boto3 wraps the real ClientError in a plain message
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
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            bucket_level = op.action == "s3:ListBucket"
            if code == "NoSuchBucket" or (bucket_level and code in {"404", "NotFound"}):
                return StorageAccessError(
                    f"bucket {self.bucket!r} does not exist ({self.url()}); create it or fix --out"
                )
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


def _etag(reply: dict[str, Any]) -> str | None:
    etag = reply.get("ETag")
    return str(etag).strip('"') if etag else None
