"""Where the lake lives: a small async object-store interface and its local-disk form.

The lake writer and the manifest speak only :class:`Store`: keys are ``/``-separated
paths relative to the lake root (``ips/dt=2024-01-01/part-....parquet``). Two
promises every store keeps:

* an object appears whole or not at all (local: write a dot-file, fsync, rename;
  S3: a PUT or a completed multipart upload), and
* it is durable when :meth:`Store.commit` or :meth:`Store.put_bytes` returns.

Big files are written by pyarrow to a local *staging* path first and then committed
(renamed into place, or uploaded by :mod:`harvester.s3`). All blocking I/O runs in
threads so the event loop keeps fetching.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from harvester.errors import ConfigError, StorageAccessError, StorageError


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """One version of an object: where, how big, and a token naming that version.

    ``version`` is S3's ETag without quotes, or on local disk a token built from the
    file's inode, size and modification time (every local write stamps a new one). It is
    only ever compared for equality. ``etag`` is the content hash S3 reports.
    """

    key: str
    size: int
    version: str
    etag: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0 or not self.version:
            raise ValueError(f"object info for {self.key!r} needs a size >= 0 and a version")


@dataclass(frozen=True, kw_only=True)
class StoredFile:
    """An object as it was committed."""

    key: str
    size: int
    etag: str | None = None


class Store(abc.ABC):
    """An async object store rooted at one lake location."""

    @abc.abstractmethod
    def url(self, key: str = "") -> str:
        """Where ``key`` lives, for messages (``/abs/path`` or ``s3://bucket/prefix/key``)."""

    @abc.abstractmethod
    def staging(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local path to write ``key``'s content to; removed on exit if still there."""

    @abc.abstractmethod
    async def commit(self, staged: Path, key: str) -> StoredFile:
        """Make the staged file visible, whole, at ``key``."""

    @abc.abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> StoredFile:
        """Write a small object atomically and durably."""

    @abc.abstractmethod
    async def get_bytes(self, key: str) -> bytes | None:
        """Read an object, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursive), sorted."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Every object in folder ``prefix`` (recursive), sorted by key; dot-files skipped."""

    @abc.abstractmethod
    def fetch(
        self, key: str
    ) -> contextlib.AbstractAsyncContextManager[tuple[Path, ObjectInfo] | None]:
        """A local path to read ``key`` from, and its version; ``None`` if missing.

        For reading only. Local disk hands out the file itself; S3 downloads it into a
        temporary file that is removed on exit.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Prove the lake can be written, leaving nothing behind; raise otherwise."""

    async def discard_stale(self, key: str) -> None:
        """Remove staging leftovers of ``key`` from a process that was killed.

        Only the unit that owns ``key`` calls this, so it never races another writer.
        """

    async def close(self) -> None:
        """Release clients and threads."""


class LocalStore(Store):
    """A lake on local disk (or any mounted file system)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    def url(self, key: str = "") -> str:
        """The absolute path of ``key``."""
        return str(self.root / key) if key else str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    @contextlib.asynccontextmanager
    async def staging(self, key: str) -> AsyncIterator[Path]:
        """A dot-file beside the target: readers' globs skip it, rename is atomic."""
        target = self._path(key)
        staged = _staged_beside(target)
        await asyncio.to_thread(_mkdir, target.parent)
        try:
            yield staged
        finally:
            await asyncio.to_thread(staged.unlink, missing_ok=True)

    async def discard_stale(self, key: str) -> None:
        """Unlink ``.{name}.*.tmp`` beside ``key``: what a SIGKILL left behind."""
        target = self._path(key)
        if target.parent.is_dir():
            for leftover in target.parent.glob(f".{target.name}.*.tmp"):
                await asyncio.to_thread(leftover.unlink, missing_ok=True)

    async def commit(self, staged: Path, key: str) -> StoredFile:
        """Sync the staged file, rename it into place, sync the folder."""
        return await asyncio.to_thread(self._commit, staged, key)

    def _commit(self, staged: Path, key: str) -> StoredFile:
        target = self._path(key)
        try:
            _fsync(staged)
            os.replace(staged, target)
            _fsync_dir(target.parent)
            return StoredFile(key=key, size=target.stat().st_size)
        except OSError as exc:
            raise _local_error(exc, target) from exc

    async def put_bytes(self, key: str, data: bytes) -> StoredFile:
        """Write through a dot-file and rename, in one trip to a worker thread."""
        return await asyncio.to_thread(self._put_bytes, key, data)

    def _put_bytes(self, key: str, data: bytes) -> StoredFile:
        target = self._path(key)
        staged = _staged_beside(target)
        try:
            _mkdir(target.parent)
            _write(staged, data)
            return self._commit(staged, key)
        except OSError as exc:
            raise _local_error(exc, target) from exc
        finally:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)

    async def get_bytes(self, key: str) -> bytes | None:
        """Read a file, or ``None`` if missing."""
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _local_error(exc, self._path(key)) from exc

    async def list_keys(self, prefix: str) -> list[str]:
        """Files under ``prefix``, skipping staging dot-files."""
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Files in folder ``prefix`` with their size and version, sorted, dot-files skipped."""
        return await asyncio.to_thread(self._list_info, prefix)

    def _list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        found = []
        for key in self._list(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted since it was listed
                stat = self._path(key).stat()
                found.append(ObjectInfo(key=key, size=stat.st_size, version=_version(stat)))
        return found

    @contextlib.asynccontextmanager
    async def fetch(self, key: str) -> AsyncIterator[tuple[Path, ObjectInfo] | None]:
        """The file itself and its version now; read it, never write it.

        Files are only ever replaced by rename, so an open file stays whole.
        """
        path = self._path(key)
        try:
            stat = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            yield None
            return
        except OSError as exc:
            raise _local_error(exc, path) from exc
        yield path, ObjectInfo(key=key, size=stat.st_size, version=_version(stat))

    async def delete(self, key: str) -> None:
        """Unlink ``key`` if present."""
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise _local_error(exc, self._path(key)) from exc

    async def check_writable(self) -> None:
        """Create the root and write, then remove, a probe dot-file."""
        await asyncio.to_thread(self._check_writable)

    def _check_writable(self) -> None:
        # Folders made for the probe are removed again: a run that stops before its
        # first window (a refused key, say) leaves no trace.
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file, not a folder; pick a folder")
        created = [p for p in (self.root, *self.root.parents) if not p.exists()]
        probe = self.root / f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            _mkdir(self.root)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageAccessError(
                f"cannot write to --out {self.root} ({exc.strerror or exc}); "
                "pick a folder you can write to"
            ) from exc
        finally:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _version(stat: os.stat_result) -> str:
    return f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}"


def _staged_beside(target: Path) -> Path:
    """A fresh dot-file name beside ``target``: globs skip it, a rename makes it ``target``."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        _fsync(path)


def _local_error(exc: OSError, path: Path) -> StorageError:
    if isinstance(exc, PermissionError):
        return StorageAccessError(f"permission denied writing {path}; check --out")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


def open_store(out: str, *, s3_endpoint_url: str | None = None) -> Store:
    """The store for ``--out``: ``s3://bucket/prefix`` or a local folder."""
    if out.startswith("s3://"):
        from harvester.s3 import S3Store

        return S3Store.from_url(out, endpoint_url=s3_endpoint_url)
    if "://" in out:
        raise ConfigError(
            f"--out {out!r} has an unknown scheme; use a folder or s3://bucket/prefix"
        )
    return LocalStore(out)
