"""A run's local staging folder, named after its owner, and the cleanup of dead ones.

Spools and files being made live in ``{root}/{run_id}/`` with an ``owner.json`` naming
the run's process and host. For a local lake the root is ``{out}/_staging`` (the same
disk, so a finished file is renamed into place; readers skip ``_`` folders); for an S3
lake it is a folder in the system's temporary directory (``TMPDIR``).

A run removes its own folder when it ends. A folder whose owner is dead -- on this
host, no such process -- or that has not been touched for a long while (its owner on
another host stopped renewing) is removed by the next run that starts; a live run's
folder is never touched, which is what lets two runs share a lake.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from harvester.leases import Owner
from harvester.storage import LocalStore, Store, local_error

OWNER = "owner.json"
STALE = 3600.0
"""Seconds after which an untouched folder of another host's run is taken for dead."""


def staging_root(store: Store) -> Path:
    """Where runs on ``store`` stage: beside the lake if it is local, else in ``TMPDIR``."""
    if isinstance(store, LocalStore):
        return store.root / "_staging"
    return Path(tempfile.gettempdir()) / "harvester-staging"


class Staging:
    """One run's staging folder."""

    def __init__(self, root: Path, owner: Owner, *, stale: float = STALE) -> None:
        self.root = root
        self.owner = owner
        self.path = root / owner.run_id
        self.stale = stale

    async def open(self) -> Path:
        """Create the folder (and sweep dead runs' folders); return it."""
        await asyncio.to_thread(self._open)
        return self.path

    def _open(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / OWNER).write_bytes(orjson.dumps(asdict(self.owner)))
        except OSError as exc:
            raise local_error(exc, self.path) from exc
        for folder in self.root.iterdir():
            if folder != self.path and folder.is_dir() and self._dead(folder):
                shutil.rmtree(folder, ignore_errors=True)

    def _dead(self, folder: Path) -> bool:
        marker = folder / OWNER
        try:
            owner = Owner(**orjson.loads(marker.read_bytes()))
            age = time.time() - marker.stat().st_mtime
        except (OSError, ValueError, TypeError):
            # No readable owner: a folder being created right now, or debris.
            with contextlib.suppress(OSError):
                return time.time() - folder.stat().st_mtime > self.stale
            return False
        alive = owner.alive()
        return alive is False or (alive is None and age > self.stale)

    def touch(self) -> None:
        """Show the run is alive (another host's sweep goes by the owner file's age)."""
        with contextlib.suppress(OSError):
            (self.path / OWNER).touch()

    async def close(self) -> None:
        """Remove the folder and everything in it."""
        await asyncio.to_thread(shutil.rmtree, self.path, True)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only when no other run stages there
