"""The simulated API in a separate process, so it never shares a GIL with the client measured.

:class:`SimProcess` starts :class:`harvester.sim.server.Simulator` (what
``harvester simulate`` / :func:`harvester.sim.server.serve` run) in a child process made
with the ``forkserver`` start method, waits until it listens and hands back its URL. The
fork server imports the simulator once and forks a fresh child for every scenario from
that single-threaded process, so a child shares nothing with the harness (as with
``spawn``) without paying the imports each time. The
child enlarges the simulator's caches (query results, rendered pages, generated days)
so that after one warm pass (:func:`benchmarks.ceiling.walk_pages`) every page is served
from memory as pre-rendered bytes: the server then does little more than copy bytes
to a socket. Counters are read and reset over HTTP (``/_sim/stats``,
``/_sim/reset-stats``), which works across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import signal
import urllib.request
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any

from harvester.sim.data import DatasetSpec
from harvester.sim.server import ServerOptions

#: Rendered-page cache of the child, in bytes (the simulator's default is 256 MiB).
PAGE_CACHE_BYTES = 6 * 2**30
#: Rows of query results the child keeps (default 5 million).
SELECTION_ROWS = 20_000_000
#: Generated records the child keeps (default 3 million).
DATASET_ROWS = 12_000_000
#: What the fork server imports once, for every simulator child it forks.
PRELOAD = ["benchmarks.simproc", "harvester.sim.server", "harvester.sim.data"]


@dataclass(frozen=True, kw_only=True)
class CacheLimits:
    """How much the child simulator may cache; large enough to hold a whole scenario."""

    page_bytes: int = PAGE_CACHE_BYTES
    selection_rows: int = SELECTION_ROWS
    dataset_rows: int = DATASET_ROWS


def _portable(options: ServerOptions) -> dict[str, Any]:
    """``options`` as picklable data (a spec's ``dense_days`` is a read-only mappingproxy)."""
    spec = {f.name: getattr(options.dataset, f.name) for f in fields(options.dataset)}
    spec["dense_days"] = dict(spec["dense_days"])
    rest = {f.name: getattr(options, f.name) for f in fields(options) if f.name != "dataset"}
    return {"dataset": spec, **rest}


def _rebuild(data: dict[str, Any]) -> ServerOptions:
    """Inverse of :func:`_portable`."""
    return ServerOptions(**{**data, "dataset": DatasetSpec(**data["dataset"])})


def _enlarge_caches(server_module: Any, simulator: Any, limits: CacheLimits) -> str:
    """Raise the simulator's cache budgets; return how (or why not), for the report.

    The simulator keeps rendered pages (256 MiB) and query results (5M rows) in LRU
    caches whose budgets are private. A scenario bigger than that would be re-rendered
    on every pass, so the budgets are raised here, in the child only. Both layouts the
    simulator has had are handled: module constants read at call time, and ``_LRU``
    objects with a ``_budget`` on the service.
    """
    done = []
    for name, value in (
        ("_PAGE_BYTES", limits.page_bytes),
        ("_SELECTION_ROWS", limits.selection_rows),
    ):
        if hasattr(server_module, name):
            setattr(server_module, name, value)
            done.append(name)
    service = getattr(simulator, "_service", None)
    for name, value in (("_pages", limits.page_bytes), ("_selections", limits.selection_rows)):
        cache = getattr(service, name, None)
        if cache is not None and hasattr(cache, "_budget"):
            cache._budget = value
            done.append(name)
    if not done:
        return "default (not enlarged: the simulator's caches changed shape)"
    return f"pages {limits.page_bytes / 2**30:g} GiB, query results {limits.selection_rows:,} rows"


def _child(portable: dict[str, Any], limits: CacheLimits, conn: Any) -> None:
    """Entry point of the child process: serve until SIGTERM."""
    import harvester.sim.server as server
    from harvester.sim.data import Dataset

    options = _rebuild(portable)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        dataset = Dataset(options.dataset, max_cached_rows=limits.dataset_rows)
        try:
            simulator = server.Simulator(options, dataset=dataset)
            caches = _enlarge_caches(server, simulator, limits)
            async with simulator as sim:
                conn.send({"url": sim.url, "caches": caches})
                await stop.wait()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.send({"error": f"{type(exc).__name__}: {exc}"})
            raise

    try:
        asyncio.run(main())
    finally:
        conn.close()


class SimProcess:
    """A simulator in its own process; use as a context manager or call start()/stop()."""

    def __init__(self, options: ServerOptions, *, limits: CacheLimits | None = None) -> None:
        self.options = options
        self.limits = limits or CacheLimits()
        self._process: Any = None
        self._url: str | None = None
        #: How the child's caches were sized (reported with the results).
        self.caches = ""

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43210``, while running."""
        if self._url is None:
            raise RuntimeError("the simulator process is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        """The child's process id while running."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 60.0) -> str:
        """Start the child and return its URL once it listens."""
        if self._process is not None:
            raise RuntimeError("already started")
        context = multiprocessing.get_context("forkserver")
        # Effective when the fork server first starts (the first simulator of a run).
        context.set_forkserver_preload(PRELOAD)
        parent, child = context.Pipe(duplex=False)
        process = context.Process(
            target=_child,
            args=(_portable(self.options), self.limits, child),
            name="bench-sim",
            daemon=True,
        )
        process.start()
        child.close()
        try:
            if not parent.poll(timeout):
                raise RuntimeError(f"the simulator process did not start within {timeout}s")
            message = parent.recv()
        except BaseException:
            process.terminate()
            process.join(10)
            parent.close()
            raise
        parent.close()
        if not isinstance(message, dict) or "url" not in message:
            process.join(10)
            raise RuntimeError(f"the simulator process failed: {message}")
        self._process, self._url = process, str(message["url"])
        self.caches = str(message["caches"])
        return self._url

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s); idempotent."""
        process, self._process, self._url = self._process, None, None
        if process is not None:
            terminate(process)

    def stats(self) -> dict[str, Any]:
        """The simulator's counters (``SimStats.as_json``)."""
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=30) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def reset_stats(self) -> None:
        """Zero the simulator's counters."""
        request = urllib.request.Request(self.url + "/_sim/reset-stats", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def __enter__(self) -> SimProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def terminate(process: multiprocessing.process.BaseProcess) -> None:
    """Stop a server child: SIGTERM, then SIGKILL if it is still there after 10 s."""
    process.terminate()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(10)
    process.close()
