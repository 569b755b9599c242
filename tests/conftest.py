"""Shared fixtures: the simulator over real HTTP, a lake folder, and the S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harvester.sim.data import DatasetSpec
from harvester.sim.server import ServerOptions, SimulatorThread

SIM_KEY = "sim-test-key-5f2c9a"


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorThread]:
    """A fault-free simulator on loopback, shared by the session (read-only use)."""
    options = ServerOptions(
        api_key=SIM_KEY, dataset=DatasetSpec(seed=11, rows_per_day=120), max_limit=50
    )
    with SimulatorThread(options) as server:
        yield server


@pytest.fixture
def make_sim() -> Iterator[object]:
    """A factory for simulators with their own options; all stopped at the end."""
    started: list[SimulatorThread] = []

    def start(**options: object) -> SimulatorThread:
        options.setdefault("api_key", SIM_KEY)
        options.setdefault("dataset", DatasetSpec(seed=11, rows_per_day=120))
        server = SimulatorThread(ServerOptions(**options))  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


from s3_server import *  # noqa: E402, F403  (the S3 server fixtures)
