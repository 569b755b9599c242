"""A store double whose compare-and-set is atomic, with fault knobs for protocol tests.

Why a double at all: moto checks ``If-Match``/``If-None-Match`` without a lock (two racing
conditional PUTs can both pass) and does not check ``If-Match`` on a multipart
completion, so a broken commit protocol can pass against it. :class:`MemoryStore` makes
every conditional operation atomic under one lock, so a protocol test that fails on it
fails because of the protocol, and it can inject the faults a protocol must survive:

* :meth:`MemoryStore.lose_next_response`: the next matching write, commit or delete is
  applied, but the caller gets a :class:`~harvester.errors.TransientStorageError` (a
  response lost on the way back). A retry with the same ``expect`` then meets a
  :class:`~harvester.errors.Conflict`, as on S3.
* :meth:`MemoryStore.conflict_next`: a foreign writer replaces the object just before
  the next matching *conditional* write, commit or delete checks its condition.
* :meth:`MemoryStore.fail_next`: the next matching call of a method fails before it
  does anything.
* :attr:`MemoryStore.calls` counts calls per method (``read``, ``write``, ``commit``,
  ``delete``, ``list``, ``fetch``, ...), so a test can bound the store calls of, say,
  a no-op run.

Versions are counters (``"1"``, ``"2"``, ...) shared by all keys, so a version never
repeats, not even for identical bytes. Keys match patterns with :func:`fnmatch.fnmatchcase`
(``"_manifest/*"``, ``"*"``). Thread- and task-safe: one :class:`threading.Lock` guards
every operation, and no operation awaits while it holds it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from harvester.errors import Conflict, TransientStorageError
from harvester.storage import Absent, Blob, Expect, ObjectInfo, Store

MUTATIONS = ("write", "commit", "delete")


@dataclass(kw_only=True)
class _Fault:
    """One armed fault: what it does, to which keys and methods; used once."""

    kind: str  # "lose", "conflict" or "fail"
    pattern: str
    methods: tuple[str, ...]
    data: bytes | None = None
    error: BaseException | None = None

    def matches(self, method: str, key: str) -> bool:
        return method in self.methods and fnmatchcase(key, self.pattern)


class MemoryStore(Store):
    """An in-memory :class:`~harvester.storage.Store` with atomic compare-and-set."""

    def __init__(self, *, name: str = "lake") -> None:
        self.name = name
        self.calls: Counter[str] = Counter()
        self.conflicts = 0
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._last_version = 0
        self._faults: list[_Fault] = []
        self._tmp: Path | None = None

    # -- knobs -----------------------------------------------------------------------

    def lose_next_response(
        self, pattern: str = "*", *, methods: tuple[str, ...] = MUTATIONS
    ) -> None:
        """Apply the next matching mutation, then raise as if its response was lost.

        The caller sees a TransientStorageError; the object has changed all the same.
        """
        self._arm(_Fault(kind="lose", pattern=pattern, methods=methods))

    def conflict_next(self, pattern: str = "*", *, data: bytes | None = None) -> None:
        """A foreign write just before the next matching conditional mutation.

        It writes ``data`` (by default the object's current bytes, or ``b""``) as a new
        version, so the mutation's condition no longer holds.
        """
        self._arm(_Fault(kind="conflict", pattern=pattern, methods=MUTATIONS, data=data))

    def fail_next(
        self,
        pattern: str = "*",
        *,
        methods: tuple[str, ...] = ("read", "fetch", "list", *MUTATIONS),
        error: BaseException | None = None,
    ) -> None:
        """Make the next matching call raise before doing anything.

        ``error`` defaults to a TransientStorageError; ``list`` matches on its prefix.
        """
        self._arm(_Fault(kind="fail", pattern=pattern, methods=methods, error=error))

    def armed(self) -> int:
        """How many armed faults have not fired yet."""
        with self._lock:
            return len(self._faults)

    def snapshot(self) -> dict[str, bytes]:
        """Every object's bytes, by key."""
        with self._lock:
            return {key: data for key, (data, _) in self._objects.items()}

    def _arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, kind: str, method: str, key: str) -> _Fault | None:
        """The first armed fault of ``kind`` for this call, disarmed. Lock held."""
        for i, fault in enumerate(self._faults):
            if fault.kind == kind and fault.matches(method, key):
                return self._faults.pop(i)
        return None

    def _enter(self, method: str, key: str) -> None:
        """Count the call and fire a ``fail`` fault. Lock held."""
        self.calls[method] += 1
        fault = self._take("fail", method, key)
        if fault is not None:
            raise fault.error or TransientStorageError(
                f"injected failure {method} {self.url(key)} (nothing was done)"
            )

    # -- the atomic core (lock held) ---------------------------------------------------

    def _put(self, key: str, data: bytes) -> ObjectInfo:
        self._last_version += 1
        version = str(self._last_version)
        self._objects[key] = (bytes(data), version)
        return ObjectInfo(key=key, size=len(data), version=version)

    def _check(self, method: str, key: str, expect: Expect) -> None:
        if expect is None:
            return
        foreign = self._take("conflict", method, key)
        if foreign is not None:
            current = self._objects.get(key)
            unchanged = current[0] if current is not None else b""
            self._put(key, foreign.data if foreign.data is not None else unchanged)
        current = self._objects.get(key)
        if isinstance(expect, Absent):
            if current is not None:
                self.conflicts += 1
                raise Conflict(f"{self.url(key)} exists (version {current[1]}); expected absent")
        elif current is None or current[1] != expect:
            self.conflicts += 1
            found = "missing" if current is None else f"version {current[1]}"
            raise Conflict(f"{self.url(key)} is {found}; expected version {expect}")

    def _lost(self, method: str, key: str) -> None:
        if self._take("lose", method, key) is not None:
            raise TransientStorageError(
                f"injected lost response {method} {self.url(key)} (it was applied)"
            )

    def _mutate(self, method: str, key: str, data: bytes, expect: Expect) -> ObjectInfo:
        with self._lock:
            self._enter(method, key)
            self._check(method, key, expect)
            info = self._put(key, data)
            self._lost(method, key)
            return info

    # -- the Store interface ---------------------------------------------------------

    def url(self, key: str = "") -> str:
        """``memory://name/key``."""
        return f"memory://{self.name}/{key}" if key else f"memory://{self.name}"

    def _local_dir(self) -> Path:
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="memstore-"))
            return self._tmp

    @contextlib.asynccontextmanager
    async def staging(self, key: str) -> AsyncIterator[Path]:
        """A file in a temporary folder; removed on exit."""
        staged = self._local_dir() / f"{uuid.uuid4().hex[:12]}-{Path(key).name}"
        try:
            yield staged
        finally:
            staged.unlink(missing_ok=True)

    async def read(self, key: str) -> Blob | None:
        """The bytes and version, read under the lock (they agree)."""
        with self._lock:
            self._enter("read", key)
            found = self._objects.get(key)
        if found is None:
            return None
        data, version = found
        return Blob(data=data, info=ObjectInfo(key=key, size=len(data), version=version))

    async def write(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectInfo:
        """Check ``expect`` and store ``data`` in one atomic step."""
        return self._mutate("write", key, data, expect)

    async def commit(self, staged: Path, key: str, *, expect: Expect = None) -> ObjectInfo:
        """Store the staged file's bytes (read first, outside the lock), atomically."""
        data = await asyncio.to_thread(staged.read_bytes)
        return self._mutate("commit", key, data, expect)

    async def delete(self, key: str, *, expect: str | None = None) -> None:
        """Remove ``key`` if ``expect`` holds; a missing key without ``expect`` is fine."""
        with self._lock:
            self._enter("delete", key)
            self._check("delete", key, expect)
            self._objects.pop(key, None)
            self._lost("delete", key)

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> builtins.list[ObjectInfo]:
        """Objects in folder ``prefix``, sorted, dot-files skipped, after ``start_after``."""
        folder = prefix.strip("/")
        with self._lock:
            self._enter("list", prefix)
            items = builtins.list(self._objects.items())
        found = [
            ObjectInfo(key=key, size=len(data), version=version)
            for key, (data, version) in items
            if (not folder or key.startswith(f"{folder}/"))
            and not key.rsplit("/", 1)[-1].startswith(".")
            and (start_after is None or key > start_after)
        ]
        return sorted(found, key=lambda info: info.key)

    @contextlib.asynccontextmanager
    async def fetch(self, key: str) -> AsyncIterator[tuple[Path, ObjectInfo] | None]:
        """The object copied into a temporary file, removed on exit."""
        with self._lock:
            self._enter("fetch", key)
            found = self._objects.get(key)
        if found is None:
            yield None
            return
        data, version = found
        path = self._local_dir() / f"{uuid.uuid4().hex[:12]}-{Path(key).name}"
        path.write_bytes(data)
        try:
            yield path, ObjectInfo(key=key, size=len(data), version=version)
        finally:
            path.unlink(missing_ok=True)

    async def check_writable(self) -> None:
        """Always writable."""
        with self._lock:
            self.calls["check_writable"] += 1

    async def close(self) -> None:
        """Remove the temporary folder."""
        with self._lock:
            tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
