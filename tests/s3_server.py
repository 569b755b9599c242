"""S3 test fixtures: a real S3 protocol server (moto) on loopback, and a faulty proxy.

``s3_server`` runs moto's server for the whole session; ``s3_bucket`` makes a fresh
bucket per test. :class:`FaultProxy` is a small aiohttp reverse proxy on loopback, in
front of moto, that answers a seeded share of matching requests (by default uploads:
PUT and POST; :func:`is_upload_part` and :func:`is_complete` pick out the steps of a
multipart upload) with an S3 error document (503 SlowDown, 500 InternalError, 403
AccessDenied, ...), a TCP reset, or a *lost response* (the request reaches moto and is
applied, then the connection is reset), and forwards everything else unchanged. Clients
see real HTTP failures, exactly as from S3. A ``plan`` replaces the dice with a script:
one kind per matching request, in order (``"pass"`` forwards). ``flaky_s3`` is a
ready-made flaky endpoint; ``fault_proxy`` builds one with other knobs.

What moto 5.2.5 checks of conditional requests (read in its source, relied on by the
tests): ``If-None-Match: *`` on PutObject and on CompleteMultipartUpload, ``If-Match``
on PutObject (a missing object is 404 NoSuchKey) and on DeleteObject. It does *not*
check ``If-Match`` on CompleteMultipartUpload, it treats a repeated completion of an
upload that produced the current object as a success, and it checks every condition
without a lock: two racing conditional writes can both pass. Protocol tests that need
an atomic compare-and-set use ``tests/memstore.py``.

Import into conftest with ``from s3_server import *``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import yarl
from aiohttp import ClientSession, ClientTimeout, web
from moto.server import ThreadedMotoServer

__all__ = [
    "FaultProxy",
    "ProxyStats",
    "admin_client",
    "fault_proxy",
    "flaky_s3",
    "is_complete",
    "is_part_or_complete",
    "is_upload_part",
    "s3_bucket",
    "s3_server",
]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables that would point boto3 somewhere other than the test server.
UNSET = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_GLUE",
    "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
)  # fmt: skip
FAULTS: dict[str, tuple[int, str, str]] = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "unavailable": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "denied": (403, "AccessDenied", "Access Denied"),
    "badkey": (403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist."),
    "nosuchupload": (404, "NoSuchUpload", "The specified upload does not exist."),
    "precondition": (412, "PreconditionFailed", "At least one of the pre-conditions failed."),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "upgrade", "te"}


@contextlib.contextmanager
def admin_client(endpoint_url: str) -> Iterator[Any]:
    """A boto3 S3 client for setting up and inspecting the server; closed on exit."""
    client = boto3.session.Session().client("s3", endpoint_url=endpoint_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Moto's S3 server on 127.0.0.1 (free port) for the session; yields its URL."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as env:
        for name in UNSET:
            env.delenv(name, raising=False)
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        env.setenv("AWS_CONFIG_FILE", str(empty))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[tuple[str, str]]:
    """A fresh, uniquely named bucket; yields (endpoint_url, bucket) and empties it after."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    with admin_client(s3_server) as client:
        client.create_bucket(Bucket=bucket)
        yield s3_server, bucket
        _remove_bucket(client, bucket)


def _remove_bucket(client: Any, bucket: str) -> None:
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def is_upload(method: str, path_qs: str) -> bool:
    """Requests that write: PutObject, UploadPart, Create/CompleteMultipartUpload."""
    return method in {"PUT", "POST"}


def is_upload_part(method: str, path_qs: str) -> bool:
    """UploadPart: a PUT with ``partNumber``."""
    return method == "PUT" and "partNumber=" in path_qs


def is_complete(method: str, path_qs: str) -> bool:
    """CompleteMultipartUpload: a POST with ``uploadId``."""
    return method == "POST" and "uploadId=" in path_qs


def is_part_or_complete(method: str, path_qs: str) -> bool:
    """The steps of a multipart upload after its creation."""
    return is_upload_part(method, path_qs) or is_complete(method, path_qs)


@dataclass
class ProxyStats:
    """What the proxy saw: requests, faults, and the headers of every matching request.

    Each fault is listed as ``"kind METHOD path?query"``.
    """

    requests: int = 0
    faults: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    faulted: list[str] = field(default_factory=list)
    headers: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class FaultProxy:
    """A loopback reverse proxy to ``upstream`` that fails a seeded share of requests.

    ``kinds`` are names of :data:`FAULTS`, ``"reset"`` (no response, nothing done) and
    ``"lost"`` (done upstream, then no response). With ``plan``, matching requests get
    its kinds in order instead of the dice, then pass. The headers of every matching
    request are kept in ``stats.headers``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.3,
        seed: int = 20240101,
        kinds: tuple[str, ...] = ("slowdown", "internal", "reset"),
        match: Callable[[str, str], bool] = is_upload,
        plan: Sequence[str] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.kinds = kinds
        self.match = match
        self.plan = None if plan is None else list(plan)
        self.stats = ProxyStats()
        self.url = ""
        self._random = random.Random(seed)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._session: ClientSession | None = None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.url:
            raise RuntimeError("fault proxy did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        timeout = ClientTimeout(total=60)
        async with ClientSession(auto_decompress=False, timeout=timeout) as session:
            self._session = session
            app = web.Application(client_max_size=1024**3)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url = f"http://{host}:{port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def _kind(self, request: web.Request) -> str | None:
        """The fault for this request, or ``None`` to forward it."""
        if not self.match(request.method, request.path_qs):
            return None
        self.stats.headers.append((request.method, request.path_qs, dict(request.headers)))
        if self.plan is not None:
            kind = self.plan.pop(0) if self.plan else "pass"
            return None if kind == "pass" else kind
        if self._random.random() < self.rate:
            return self._random.choice(self.kinds)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.stats.requests += 1
        kind = self._kind(request)
        if kind is not None:
            self.stats.faults += 1
            self.stats.kinds[kind] += 1
            self.stats.faulted.append(f"{kind} {request.method} {request.path_qs}")
            if kind == "lost":
                await self._forward(request, body)
                return self._reset(request)
            if kind == "reset":
                return self._reset(request)
            status, code, message = FAULTS[kind]
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>fault-{self.stats.faults}</RequestId></Error>"
            )
            return web.Response(status=status, body=xml.encode(), content_type="application/xml")
        return await self._forward(request, body)

    def _reset(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)  # never sent: aiohttp drops it on the dead socket

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = yarl.URL(self.upstream + request.raw_path, encoded=True)
        assert self._session is not None
        async with self._session.request(
            request.method,
            url,
            headers=headers,
            data=io.BytesIO(body) if body else None,  # bytes > 1 MiB draw a ResourceWarning
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "Content-Type", "User-Agent", "Accept"),
        ) as upstream:
            payload = await upstream.read()
            reply = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.method != "HEAD":
            reply.pop("Content-Length", None)
            reply.pop("content-length", None)
        return web.Response(status=upstream.status, body=payload or None, headers=reply)


@pytest.fixture
def fault_proxy(s3_server: str) -> Iterator[Callable[..., FaultProxy]]:
    """A factory: ``fault_proxy(rate=..., kinds=..., match=..., seed=...)`` -> running proxy."""
    with contextlib.ExitStack() as stack:

        def make(**knobs: Any) -> FaultProxy:
            return stack.enter_context(FaultProxy(s3_server, **knobs))

        yield make


@pytest.fixture
def flaky_s3(
    s3_bucket: tuple[str, str], fault_proxy: Callable[..., FaultProxy]
) -> tuple[str, str, ProxyStats]:
    """Yields (endpoint_url, bucket, proxy_stats): ~30% of uploads fail with 5xx or reset."""
    _, bucket = s3_bucket
    proxy = fault_proxy()
    return proxy.url, bucket, proxy.stats
