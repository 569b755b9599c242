"""Where the lake lives: a small async object-store interface and its local-disk form.

The lake writer and the manifest speak only :class:`Store`: keys are ``/``-separated
paths relative to the lake root (``ips/dt=2024-01-01/part-....parquet``). Every store
keeps three promises:

* an object appears whole or not at all (local: write a dot-file, fsync, rename;
  S3: a PUT or a completed multipart upload);
* it is durable when :meth:`Store.write` or :meth:`Store.commit` returns; and
* a write or delete can be made *conditional* on the version the caller read
  (compare-and-set): ``expect=ABSENT`` ("create, never replace"), ``expect=version``
  ("replace exactly the version I read"), or ``None`` (unconditional). A condition that
  does not hold raises :class:`~harvester.errors.Conflict`; the caller re-reads and
  tries again. This one primitive serves read-modify-write of shared files, a manifest
  head updated by several shards, and leases.

Big files are written by pyarrow to a local *staging* path first and then committed
(renamed into place, or uploaded by :mod:`harvester.s3`). All blocking I/O runs in
threads so the event loop keeps fetching.

The local store makes compare-and-set atomic across processes of one machine with an
exclusive ``flock`` on the target's folder around check-then-rename. That assumes a
local disk, or a file system whose ``flock`` works between all writers (not every
network file system's does); two machines sharing one folder need S3 instead.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import errno
import fcntl
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias, final

from harvester import syncfs
from harvester.errors import ConfigError, Conflict, StorageAccessError, StorageError, StorageFull

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
"""S3's smallest part of a multipart upload (all but the last part)."""
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
"""Files at least this big go to S3 as multipart uploads (``--s3-multipart-threshold``)."""


@final
class Absent:
    """The type of :data:`ABSENT`: "the object must not exist yet" (``If-None-Match: *``)."""

    _instance: Absent | None = None

    def __new__(cls) -> Absent:
        """The one instance: ``Absent() is ABSENT``."""
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> str:
        return "ABSENT"  # pickles (to another process) as the module's singleton


ABSENT: Final[Absent] = Absent()
"""Expect the object not to exist: create it, never replace it."""

Expect: TypeAlias = str | Absent | None
"""What a conditional write expects to find: ``None`` (anything), :data:`ABSENT`, or
exactly the version string a read returned (``If-Match``)."""


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """One version of an object: where, how big, and a token naming that version.

    ``version`` is S3's ETag without quotes, or on local disk a token built from the
    file's inode, size and modification time (every local write stamps a new one). It is
    only ever compared for equality, as the ``expect`` of a later write or delete.
    ``etag`` is the content hash S3 reports (the same string as ``version`` there);
    local disk has none.
    """

    key: str
    size: int
    version: str
    etag: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0 or not self.version:
            raise ValueError(f"object info for {self.key!r} needs a size >= 0 and a version")


@dataclass(frozen=True, kw_only=True)
class Blob:
    """A small object's bytes and the version they are."""

    data: bytes
    info: ObjectInfo


@dataclass(frozen=True, kw_only=True)
class StoredFile:
    """An object as a manifest entry records it: key, size, and S3's ETag if any."""

    key: str
    size: int
    etag: str | None = None

    @classmethod
    def of(cls, info: ObjectInfo) -> StoredFile:
        """The manifest record of a committed object."""
        return cls(key=info.key, size=info.size, etag=info.etag)


class Store(abc.ABC):
    """An async object store rooted at one lake location."""

    @abc.abstractmethod
    def url(self, key: str = "") -> str:
        """Where ``key`` lives, for messages (``/abs/path`` or ``s3://bucket/prefix/key``)."""

    @abc.abstractmethod
    def staging(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local path to write ``key``'s content to; removed on exit if still there."""

    @abc.abstractmethod
    async def read(self, key: str) -> Blob | None:
        """A small object's bytes and version, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        """Write a small object atomically and durably, if ``expect`` holds.

        Raises :class:`~harvester.errors.Conflict` when it does not: the object exists
        (``ABSENT``), or is missing or another version (a version string).
        """

    @abc.abstractmethod
    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        """Make the staged file visible, whole, at ``key``, if ``expect`` holds.

        The same semantics as :meth:`write`, for big files. On a conflict the staged file
        is left where it was (the staging context removes it).
        """

    async def read_many(self, keys: Sequence[str]) -> builtins.list[Blob | None]:
        """:meth:`read` each of ``keys``: per key, its bytes and version, or ``None``.

        A commit reads a feed's month partitions, a span its months' leases: a store
        may read them in fewer trips than one each.
        """
        return builtins.list(await asyncio.gather(*(self.read(key) for key in keys)))

    async def write_many(
        self, items: Sequence[tuple[str, bytes, Expect]]
    ) -> builtins.list[ObjectInfo | StorageError]:
        """:meth:`write` each ``(key, data, expect)``: per item, its object or its error.

        A group commit hands a store many small files at once, so that a store can make
        them durable in fewer trips than one each; every item keeps :meth:`write`'s
        promises. An item's :class:`~harvester.errors.StorageError` (a Conflict, say)
        is handed back in its place and the others still go; anything else is raised.
        """
        outcomes = await asyncio.gather(
            *(self.write(key, data, expect=expect) for key, data, expect in items),
            return_exceptions=True,
        )
        return [_outcome(o) for o in outcomes]

    @abc.abstractmethod
    async def delete(self, key: str, *, expect: str | None = None) -> None:
        """Remove ``key``; only if it is version ``expect`` when that is given.

        Without ``expect``, removing a missing key is not an error; with it, a missing
        key or another version raises :class:`~harvester.errors.Conflict`.
        """

    @abc.abstractmethod
    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> builtins.list[ObjectInfo]:
        """Every object in folder ``prefix`` (recursive), sorted by key; dot-files skipped.

        ``prefix`` is a folder: ``"ips"`` and ``"ips/"`` both mean ``ips/...`` and never
        ``ips2/...``; ``""`` is the whole store. Keys are relative to the store's root.
        ``start_after`` (a full key) skips every key up to and including it, so a caller
        that remembers where it stopped does not pay for the history before it.
        """

    @abc.abstractmethod
    def fetch(
        self, key: str
    ) -> contextlib.AbstractAsyncContextManager[tuple[Path, ObjectInfo] | None]:
        """A local path to read ``key`` from, and its version; ``None`` if missing.

        For reading only. Local disk hands out the file itself; S3 downloads it into a
        temporary file that is removed on exit.
        """

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Prove the lake can be written, leaving nothing behind; raise otherwise."""

    async def put_bytes(self, key: str, data: bytes) -> StoredFile:
        """Write a small object atomically and durably (unconditional :meth:`write`)."""
        return StoredFile.of(await self.write(key, data))

    async def get_bytes(self, key: str) -> bytes | None:
        """Read an object, or ``None`` when it does not exist."""
        blob = await self.read(key)
        return None if blob is None else blob.data

    async def list_keys(self, prefix: str) -> builtins.list[str]:
        """Every key under ``prefix`` (recursive), sorted."""
        return [info.key for info in await self.list(prefix)]

    def staging_error(self, exc: OSError, staged: Path) -> StorageError:
        """The error for ``exc``, raised while writing the staged file ``staged``."""
        return local_error(exc, staged)

    async def close(self) -> None:
        """Release clients and threads."""


class LocalStore(Store):
    """A lake on local disk (or any mounted file system whose ``flock`` works).

    Every write, conditional or not, installs its file by ``rename`` while holding an
    exclusive ``flock`` on the target's folder, after checking ``expect`` under that
    lock: so a compare-and-set is atomic against every other writer of the folder,
    threads and processes alike. Readers take no lock; a rename is atomic for them.

    A version is ``{inode}-{size}-{mtime_ns}``. Under the lock each install stamps its
    file's mtime strictly later than the version it replaces, so a key's versions never
    repeat, even when the file system reuses an inode within a clock tick.
    """

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

    async def read(self, key: str) -> Blob | None:
        """The file's bytes and the version they are (one open file: they agree)."""
        return await asyncio.to_thread(self._read, key)

    async def read_many(self, keys: Sequence[str]) -> builtins.list[Blob | None]:
        """Read every key in one thread trip (small files: the trips cost more)."""
        return await asyncio.to_thread(lambda: [self._read(key) for key in keys])

    def _read(self, key: str) -> Blob | None:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except (FileNotFoundError, NotADirectoryError):  # no such object
            return None
        except OSError as exc:
            raise local_error(exc, path) from exc
        return Blob(data=data, info=ObjectInfo(key=key, size=len(data), version=_version(stat)))

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        """Write a dot-file beside ``key``, fsync it, then install it if ``expect`` holds."""
        return await asyncio.to_thread(self._write_bytes, key, data, expect)

    def _write_bytes(self, key: str, data: bytes, expect: Expect) -> ObjectInfo:
        target = self._path(key)
        staged = _staged_beside(target)
        try:
            made = _mkdir(target.parent)
            _write_synced(staged, data)
            info = self._install(staged, key, expect)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise local_error(exc, target) from exc
            raise
        if not made:
            _sweep(target)
        return info

    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        """Sync the staged file, then rename it into place if ``expect`` holds."""
        return await asyncio.to_thread(self._commit, staged, key, expect)

    def _commit(self, staged: Path, key: str, expect: Expect) -> ObjectInfo:
        target = self._path(key)
        try:
            _fsync(staged)  # the slow part, outside the folder's lock
            made = _mkdir(target.parent)
            info = self._install(staged, key, expect)
            if not made:  # a folder made just now holds no dot-file of a dead run
                _sweep(target)
            return info
        except OSError as exc:
            raise local_error(exc, target) from exc

    async def write_many(
        self, items: Sequence[tuple[str, bytes, Expect]]
    ) -> builtins.list[ObjectInfo | StorageError]:
        """Write every item in order, in one thread trip for all of them.

        Small files (a sparse day's) cost more in trips between the event loop and a
        thread than in their own I/O; here each is still written beside its key, synced,
        renamed under its folder's lock and its folder synced, as :meth:`write` does.
        """
        return await asyncio.to_thread(self._write_many, items)

    def _write_many(
        self, items: Sequence[tuple[str, bytes, Expect]]
    ) -> builtins.list[ObjectInfo | StorageError]:
        if len(items) > 1 and syncfs.AVAILABLE:
            try:
                _mkdir(self.root)
                with syncfs.Group(self.root) as group:
                    if group.usable:
                        return self._write_group(items, group)
            except OSError as exc:
                raise local_error(exc, self.root) from exc
        done: builtins.list[ObjectInfo | StorageError] = []
        for key, data, expect in items:
            try:
                done.append(self._write_bytes(key, data, expect))
            except StorageError as exc:
                done.append(exc)
        return done

    def _write_group(
        self, items: Sequence[tuple[str, bytes, Expect]], group: syncfs.Group
    ) -> builtins.list[ObjectInfo | StorageError]:
        """Write every item's dot-file, sync them all, install each, sync again.

        Each file is durable before it is renamed into place (a crash leaves it whole
        or absent), and every rename is durable before this returns, as with
        :meth:`write`; but the whole group pays for one sync of the file system before
        the renames and one after, not two syncs per file. A file on another file system
        than the lake's root (a mount inside the lake) is synced on its own. If the
        second sync fails, the group raises: its files are in place, but not surely
        durable, and not one may be recorded (a later run finds and replaces them).
        """
        outcome: dict[int, ObjectInfo | StorageError] = {}
        pending: builtins.list[tuple[int, str, Expect, Path, bool, bool]] = []
        for index, (key, data, expect) in enumerate(items):
            target = self._path(key)
            staged = _staged_beside(target)
            try:
                made = _mkdir(target.parent)
                own = _write_staged(staged, data, device=group.device)
            except OSError as exc:
                _discard(staged)
                outcome[index] = local_error(exc, target)
                continue
            pending.append((index, key, expect, staged, made, own))
        try:
            group.sync()
        except OSError as exc:
            for index, key, _, staged, _, _ in pending:
                _discard(staged)
                outcome[index] = local_error(exc, self._path(key))
            pending = []
        for index, key, expect, staged, made, own in pending:
            try:
                outcome[index] = self._install(staged, key, expect, sync=own)
            except (OSError, StorageError) as exc:
                _discard(staged)
                outcome[index] = (
                    local_error(exc, self._path(key)) if isinstance(exc, OSError) else exc
                )
                continue
            if not made:
                _sweep(self._path(key))
        if pending:
            try:
                group.sync()
            except OSError as exc:
                raise StorageError(
                    f"cannot make files under {self.root} durable ({exc.strerror or exc}); "
                    "check the disk, then run the same command again"
                ) from exc
        return [outcome[index] for index in range(len(items))]

    def _install(
        self, staged: Path, key: str, expect: Expect, *, sync: bool = True
    ) -> ObjectInfo:
        """Check ``expect`` and rename ``staged`` to ``key``, atomically; sync the folder.

        ``sync=False`` leaves the folder to the caller (a group syncs its file system).
        """
        target = self._path(key)
        with _locked(target.parent):
            current = _check(target, expect)
            # A new version must differ from every earlier one of this key; a
            # coarse clock or a reused inode could otherwise repeat a version.
            stamp = time.time_ns()
            if current is not None:
                stamp = max(stamp, current.st_mtime_ns + 1)
            os.utime(staged, ns=(stamp, stamp))
            stat = os.stat(staged)
            os.replace(staged, target)
        if sync:
            _fsync_dir(target.parent)
        return ObjectInfo(key=key, size=stat.st_size, version=_version(stat))

    async def delete(self, key: str, *, expect: str | None = None) -> None:
        """Unlink ``key`` (only if it is version ``expect``, when given)."""
        await asyncio.to_thread(self._delete, key, expect)

    def _delete(self, key: str, expect: str | None) -> None:
        target = self._path(key)
        try:
            if not target.parent.is_dir():
                if expect is not None:
                    raise Conflict(f"{target} does not exist; expected version {expect}")
                return
            with _locked(target.parent):
                _check(target, expect)
                target.unlink(missing_ok=True)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise local_error(exc, target) from exc

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> builtins.list[ObjectInfo]:
        """Files in folder ``prefix``, sorted, dot-files skipped.

        Folders whose keys all sort at or before ``start_after`` are never opened.
        """
        return await asyncio.to_thread(self._list, prefix, start_after)

    def _list(self, prefix: str, start_after: str | None) -> builtins.list[ObjectInfo]:
        folder = prefix.strip("/")
        found: builtins.list[ObjectInfo] = []
        pending = [folder]
        try:
            while pending:
                rel = pending.pop()
                try:
                    entries = builtins.list(os.scandir(self._path(rel)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    key = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir():
                        if not _all_at_or_before(f"{key}/", start_after):
                            pending.append(key)
                    elif (
                        entry.is_file()
                        and not entry.name.startswith(".")
                        and (start_after is None or key > start_after)
                    ):
                        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                            stat = entry.stat()
                            found.append(
                                ObjectInfo(key=key, size=stat.st_size, version=_version(stat))
                            )
        except OSError as exc:
            raise local_error(exc, self._path(folder)) from exc
        return sorted(found, key=lambda info: info.key)

    @contextlib.asynccontextmanager
    async def fetch(self, key: str) -> AsyncIterator[tuple[Path, ObjectInfo] | None]:
        """The file itself and its version now; read it, never write it.

        A writer may replace the file meanwhile, so what is read can be newer than the
        version given; a compare-and-set with that version then fails (``Conflict``),
        which is what a read-modify-write needs.
        """
        path = self._path(key)
        try:
            stat = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):  # no such object
            yield None
            return
        except OSError as exc:
            raise local_error(exc, path) from exc
        yield path, ObjectInfo(key=key, size=stat.st_size, version=_version(stat))

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


def _outcome(outcome: ObjectInfo | BaseException) -> ObjectInfo | StorageError:
    """An item of :meth:`Store.write_many`: its object or its StorageError; else raise."""
    if isinstance(outcome, ObjectInfo | StorageError):
        return outcome
    raise outcome


def _version(stat: os.stat_result) -> str:
    return f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder``: every writer of a key in it takes this one.

    ``flock`` belongs to the open file description, so threads of one process exclude
    each other as well as processes do; the lock goes with the descriptor.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check(target: Path, expect: Expect) -> os.stat_result | None:
    """The target's stat now (``None`` if missing); raise Conflict unless ``expect`` holds."""
    try:
        current: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        current = None
    if isinstance(expect, Absent):
        if current is not None:
            raise Conflict(f"{target} already exists (version {_version(current)})")
    elif expect is not None:
        if current is None:
            raise Conflict(f"{target} does not exist; expected version {expect}")
        if _version(current) != expect:
            raise Conflict(f"{target} is version {_version(current)}, not the expected {expect}")
    return current


def _all_at_or_before(folder: str, start_after: str | None) -> bool:
    """Whether every key starting with ``folder`` sorts at or before ``start_after``."""
    if start_after is None or start_after.startswith(folder):
        return False
    # start_after does not start with folder: it sorts either before every such key,
    # or after every one of them
    return start_after > folder


_HOST = socket.gethostname().replace(".", "_")


def _staged_beside(target: Path) -> Path:
    """A fresh dot-file beside ``target``, named after its owner (host and process).

    Globs skip it, a rename makes it ``target``, and :func:`_sweep` knows whose it is.
    """
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _sweep(target: Path) -> None:
    """Remove the dot-files beside ``target`` left by dead processes of this host.

    Another process's dot-file is a write in progress unless that process is gone (a
    ``kill -9``); files of other hosts, which this one cannot check, are left alone.
    """
    # One plain listing: a pathlib glob (a pattern compiled, every name matched, each
    # a Path) cost more than the rest of a small file's commit but its fsyncs.
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix) : -len(".tmp")].split(".")
        if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            (target.parent / name).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mkdir(path: Path) -> bool:
    """Make the folder ``path`` and its parents; whether it was made now."""
    # One plain mkdir first: a day's folder is usually new and its parents are not, and
    # pathlib's mkdir(parents=True, exist_ok=True) costs several calls on each path.
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
    return True


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and sync it, through one descriptor."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_staged(path: Path, data: bytes, *, device: int) -> bool:
    """Write ``data`` to a new file; sync it now only if it is not on ``device``.

    True when it was synced here (its own file system), and its folder must be too.
    """
    with open(path, "wb") as handle:
        handle.write(data)
        if os.fstat(handle.fileno()).st_dev == device:
            return False
        handle.flush()
        os.fsync(handle.fileno())
        return True


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        _fsync(path)


_FULL = {errno.ENOSPC, errno.EDQUOT}


def local_error(exc: OSError, path: Path, *, where: str = "") -> StorageError:
    """The storage error for an OSError on ``path``; ``where`` says whose disk it is."""
    if isinstance(exc, PermissionError):
        return StorageAccessError(f"permission denied writing {path}; check --out")
    if exc.errno in _FULL:
        return StorageFull(
            f"no space left writing {path}{where}: {exc.strerror or exc}; free space "
            "there and run the same command again"
        )
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


def open_store(
    out: str,
    *,
    s3_endpoint_url: str | None = None,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
) -> Store:
    """The store for ``--out``: ``s3://bucket/prefix`` or a local folder.

    ``multipart_threshold`` (``--s3-multipart-threshold``) matters to S3 only.
    """
    if out.startswith("s3://"):
        from harvester.s3 import S3Store

        return S3Store.from_url(
            out, endpoint_url=s3_endpoint_url, multipart_threshold=multipart_threshold
        )
    if "://" in out:
        raise ConfigError(
            f"--out {out!r} has an unknown scheme; use a folder or s3://bucket/prefix"
        )
    return LocalStore(out)
