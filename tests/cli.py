"""Run the real ``harvester`` command in a subprocess, as users and schedulers do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

SIM_KEY = "sim-test-key-5f2c9a"


def cli(
    args: Sequence[str],
    *,
    key: str | None = SIM_KEY,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m harvester ARGS`` with the key in THREATGRID_API_KEY (or none)."""
    environ = {k: v for k, v in os.environ.items() if k != "THREATGRID_API_KEY"}
    if key is not None:
        environ["THREATGRID_API_KEY"] = key
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "harvester", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )
