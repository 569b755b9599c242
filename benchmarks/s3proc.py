"""An S3 server (moto, server mode) in its own process that counts the requests it answers.

:class:`S3Process` starts moto's werkzeug application -- what ``moto_server`` and
``tests/s3_server.py`` run -- in a child made with ``spawn``, wrapped in a small WSGI
middleware that counts every request by S3 operation before moto sees it. The counts
are read and reset over HTTP (``GET /_bench/s3-stats``, ``POST /_bench/s3-reset``), so
a client process can attribute requests to its own steps. Clients reach it with
:data:`CREDENTIALS` (moto accepts any key) and ``--s3-endpoint-url``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from benchmarks.simproc import terminate

#: What boto3 needs to talk to moto, and nothing that points it anywhere else.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Variables that would send boto3 to another endpoint or profile (removed from a client's env).
UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_GLUE",
    "AWS_CA_BUNDLE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)
STATS_PATH = "/_bench/s3-stats"
RESET_PATH = "/_bench/s3-reset"


def client_env(base: dict[str, str], *, empty_config: str) -> dict[str, str]:
    """``base`` with the moto credentials set and other AWS settings removed."""
    env = {k: v for k, v in base.items() if k not in UNSET}
    env.update(CREDENTIALS)
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = empty_config
    return env


def operation(method: str, path: str, query: str) -> str:
    """The S3 operation of a request, roughly as S3's own request metrics name it."""
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    object_key = path.strip("/").count("/") >= 1
    if method == "GET":
        if object_key:
            return "GET"
        listing = {"list-type", "prefix", "delimiter", "marker", "max-keys", "start-after"}
        listing |= {"continuation-token", "encoding-type", "fetch-owner"}
        return "LIST" if params <= listing else "GET bucket"
    if method == "PUT":
        return "UploadPart" if "partNumber" in params else "PUT"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        return "POST"
    return method  # HEAD, DELETE


class _Counting:
    """WSGI middleware: count each request by operation; serve the counters."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == STATS_PATH:
            with self.lock:
                body = json.dumps(dict(self.counts)).encode()
            start("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == RESET_PATH:
            with self.lock:
                self.counts.clear()
            start("200 OK", [("Content-Type", "application/json")])
            return [b"{}"]
        kind = operation(environ["REQUEST_METHOD"], path, environ.get("QUERY_STRING", ""))
        with self.lock:
            self.counts[kind] += 1
        return self.app(environ, start)


def _child(conn: Any) -> None:
    """Entry point of the child: serve moto until terminated."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Quiet(MotoRequestHandler):  # type: ignore[misc]
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            """No access log (it would be a line per request on the harness's terminal)."""

    try:
        app = _Counting(DomainDispatcherApplication(create_backend_app))
        server = make_server("127.0.0.1", 0, app, True, request_handler=Quiet)
        host, port = server.server_address[:2]
        conn.send({"url": f"http://{host}:{port}"})
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()
    server.serve_forever()


class S3Process:
    """Moto's S3 server in its own process; use as a context manager."""

    def __init__(self) -> None:
        self._process: Any = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The endpoint URL, e.g. ``http://127.0.0.1:43210``, while running."""
        if self._url is None:
            raise RuntimeError("the S3 server process is not running")
        return self._url

    def start(self, timeout: float = 60.0) -> str:
        """Start the child and return its endpoint URL once it listens."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(child,), name="bench-s3", daemon=True)
        process.start()
        child.close()
        try:
            if not parent.poll(timeout):
                raise RuntimeError(f"the S3 server process did not start within {timeout}s")
            message = parent.recv()
        except BaseException:
            process.terminate()
            process.join(10)
            raise
        finally:
            parent.close()
        if not isinstance(message, dict) or "url" not in message:
            process.terminate()
            process.join(10)
            raise RuntimeError(f"the S3 server process failed: {message}")
        self._process, self._url = process, str(message["url"])
        return self._url

    def stop(self) -> None:
        """Terminate the child; idempotent."""
        process, self._process, self._url = self._process, None, None
        if process is not None:
            terminate(process)

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (moto checks no signature: a bare PUT does)."""
        request = urllib.request.Request(f"{self.url}/{name}", method="PUT", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def stats(self) -> dict[str, int]:
        """Requests answered since the last reset, by operation."""
        return read_stats(self.url)

    def reset(self) -> None:
        """Zero the counters."""
        reset_stats(self.url)

    def __enter__(self) -> S3Process:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_stats(url: str) -> dict[str, int]:
    """The counters of the S3 server at ``url`` (from any process)."""
    with urllib.request.urlopen(url + STATS_PATH, timeout=30) as response:
        data: dict[str, int] = json.loads(response.read())
    return data


def reset_stats(url: str) -> None:
    """Zero the counters of the S3 server at ``url`` (from any process)."""
    request = urllib.request.Request(url + RESET_PATH, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
