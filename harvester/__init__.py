"""Threat Grid IOC feed harvester: an async bulk archiver into a Parquet data lake.

The Python API (see :mod:`harvester.api`) is importable from here::

    import harvester
    result = harvester.harvest(harvester.make_config(after=..., before=..., out=...))

Names are loaded on first use, so ``import harvester`` stays cheap for the simulator
and the CLI's ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "HarvestConfig",
    "RunResult",
    "aharvest",
    "aplan",
    "astatus",
    "harvest",
    "make_config",
    "plan_view",
    "status",
]

if TYPE_CHECKING:
    from harvester.api import aharvest, aplan, astatus, harvest, make_config, plan_view, status
    from harvester.config import HarvestConfig
    from harvester.report import RunResult


def __getattr__(name: str) -> Any:
    if name in ("HarvestConfig",):
        from harvester import config

        return getattr(config, name)
    if name in ("RunResult",):
        from harvester import report

        return getattr(report, name)
    if name in __all__:
        from harvester import api

        return getattr(api, name)
    raise AttributeError(f"module 'harvester' has no attribute {name!r}")
