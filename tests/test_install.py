"""A plain ``pip install`` (no extras) gives a working ``harvester``, the demo included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_works_after_a_plain_install(tmp_path: Path) -> None:
    """A fresh venv with only the runtime dependencies runs `harvester demo` to the end."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    installed = subprocess.run(
        [*pip, str(ROOT)], capture_output=True, text=True, timeout=900, check=False
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "pytest" not in listed and "moto" not in listed and "hypothesis" not in listed
    demo = subprocess.run(
        [str(venv / "bin" / "harvester"), "demo", "--out", str(tmp_path / "demo-lake")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,  # not the checkout: the installed package must stand on its own
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "Top 10 domains" in demo.stdout and "registry_keys" in demo.stdout
