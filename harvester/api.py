"""The public Python API: build a configuration, plan, harvest, and read a lake's status.

For orchestrators (Airflow, Dagster, Prefect) and scripts. Everything here returns
data and raises the :mod:`harvester.errors` tree; nothing installs signal handlers or
configures logging (that belongs to the CLI)::

    import harvester

    config = harvester.make_config(after="2024-01-01", before="2024-02-01", out="./lake",
                                   confidence=0, severity=0)
    result = harvester.harvest(config)          # the key from THREATGRID_API_KEY
    print(result.ok, result.to_json())          # RunResult: JSON-able, for XCom

:func:`harvest` is synchronous (it runs its own event loop, as an Airflow task wants);
:func:`aharvest` is the same inside a running loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from harvester.config import API_KEY_ENV, HarvestConfig, build_config, load_toml
from harvester.errors import ConfigError
from harvester.orchestrator import Harvest, plan
from harvester.planner import describe_plan
from harvester.report import RunResult
from harvester.retry import Sleep
from harvester.secret import Secret
from harvester.storage import Store, open_store


def make_config(
    path: str | os.PathLike[str] | None = None,
    /,
    *,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
    **options: Any,
) -> HarvestConfig:
    """A validated :class:`HarvestConfig` from keyword options, a TOML file, or both.

    Options are spelled like the CLI's flags with ``_`` (``base_url``, ``since_last``);
    keyword options win over the file, as flags do. ``env`` (default ``os.environ``) is
    read for the shard index of ``shards=N``; ``now`` stands in for the clock of
    ``before="now"``.
    """
    from_file = load_toml(os.fspath(path)) if path is not None else {}
    merged = {**from_file, **{k: v for k, v in options.items() if v is not None}}
    return build_config(merged, None if env is None else dict(env), now=now)


def api_key_from_env(env: Mapping[str, str] | None = None) -> Secret:
    """The API key from ``THREATGRID_API_KEY``; a :class:`ConfigError` if it is not set."""
    value = (os.environ if env is None else env).get(API_KEY_ENV, "").strip()
    if not value:
        raise ConfigError(f"{API_KEY_ENV} is not set; export your Threat Grid API key in it")
    return Secret(value)


async def aharvest(
    config: HarvestConfig,
    *,
    api_key: str | Secret | None = None,
    store: Store | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunResult:
    """Harvest what ``config`` asks for and return the outcome; see :func:`harvest`."""
    runner = prepare(config, api_key=api_key, store=store, sleep=sleep, clock=clock)
    try:
        return await runner.execute()
    finally:
        if store is None:
            await runner.store.close()


def harvest(
    config: HarvestConfig,
    *,
    api_key: str | Secret | None = None,
    store: Store | None = None,
) -> RunResult:
    """Harvest what ``config`` asks for, synchronously, and return the outcome.

    The key comes from ``api_key`` or else ``THREATGRID_API_KEY``. ``store`` defaults
    to the one ``config.out`` names (closed again at the end; a store passed in is
    left open). Failed windows are in :attr:`RunResult.failures` (``result.ok`` is
    false): running the same harvest again finishes them. Errors that stop a whole run
    (a refused key, an unwritable lake, bad input) raise from :mod:`harvester.errors`.
    """
    return asyncio.run(aharvest(config, api_key=api_key, store=store))


def prepare(
    config: HarvestConfig,
    *,
    api_key: str | Secret | None = None,
    store: Store | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Harvest:
    """A :class:`Harvest` ready to :meth:`~Harvest.execute`, for callers that watch it run.

    The CLI uses it to draw progress from :meth:`Harvest.snapshot` and to call
    :meth:`Harvest.stop` on a signal. The caller closes ``runner.store``.
    """
    if isinstance(api_key, Secret):
        key = api_key
    else:
        key = api_key_from_env() if api_key is None else Secret(api_key)
    store = store or open_store(
        config.out,
        s3_endpoint_url=config.s3_endpoint_url,
        multipart_threshold=config.s3_multipart_threshold,
    )
    return Harvest(config, api_key=key, store=store, sleep=sleep, clock=clock)


async def aplan(config: HarvestConfig, *, store: Store | None = None) -> dict[str, Any]:
    """What a harvest would do, from the lake's manifest alone; no API call."""
    own = store or open_store(
        config.out,
        s3_endpoint_url=config.s3_endpoint_url,
        multipart_threshold=config.s3_multipart_threshold,
    )
    try:
        the_plan = await plan(config, own)
        view = describe_plan(the_plan, max_span=int(config.max_span.total_seconds()))
        return {"table_format": config.table_format, **view}
    finally:
        if store is None:
            await own.close()


def plan_view(config: HarvestConfig, *, store: Store | None = None) -> dict[str, Any]:
    """Synchronous :func:`aplan`: windows, what is done, each shard's share."""
    return asyncio.run(aplan(config, store=store))


async def astatus(
    out: str, *, store: Store | None = None, s3_endpoint_url: str | None = None
) -> dict[str, Any]:
    """What the lake at ``out`` holds, per feed: complete, failed and missing days."""
    from harvester.status import collect_status

    own = store or open_store(out, s3_endpoint_url=s3_endpoint_url)
    try:
        return await collect_status(own)
    finally:
        if store is None:
            await own.close()


def status(out: str, *, s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """Synchronous :func:`astatus`."""
    return asyncio.run(astatus(out, s3_endpoint_url=s3_endpoint_url))
