"""A local, deterministic stand-in for the Threat Grid v2 IOC feed API.

:mod:`harvester.sim.data` generates a seedable dataset of feed items and answers, as
ground truth, which items a query should return. :mod:`harvester.sim.server` serves
that dataset over real HTTP with the API's envelope, parameters and errors, and can
inject the faults a harvester must survive (429, 5xx, drops, truncation, HTML pages,
refused long ranges and deep offsets, records inserted while paging, late records,
huge pages, bodies that never end or trickle in).
"""

from __future__ import annotations

from harvester.sim.data import Dataset, DatasetSpec, SimRecord
from harvester.sim.server import (
    Faults,
    ServerOptions,
    SimStats,
    Simulator,
    SimulatorThread,
    serve,
)

__all__ = [
    "Dataset",
    "DatasetSpec",
    "Faults",
    "ServerOptions",
    "SimRecord",
    "SimStats",
    "Simulator",
    "SimulatorThread",
    "serve",
]
