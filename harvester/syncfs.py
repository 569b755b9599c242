"""Make a group of local files durable at once: Linux's ``syncfs(2)``, where it is sound.

A group commit writes many small files together (a sparse month is a file per day).
Syncing each file and then its folder costs two journal commits per file; ``syncfs``
writes back everything dirty on one file system in a single pass. On this project's
ext4 test machine, 2,562 day folders and files were created, written and renamed in
0.2-0.5 s with one ``syncfs`` per 31 files, against 1.2-2.8 s with an ``fsync`` of each
file and folder, and 0.8-2.1 s with no sync at all (ext4 allocates inodes slowly while
many new ones wait unsynced).

It is used only where it is sound:

* **Linux 5.8 or later.** Since then ``syncfs`` reports a write-back error that the
  file system met since *the descriptor it is given* was opened. A :class:`Group` opens
  its descriptor before the group's first write and syncs through it, so an error in
  any of the group's files is seen, even if another caller's sync reported it first.
* **A local file system** (ext2/3/4, XFS, Btrfs, F2FS, ZFS, tmpfs, and overlayfs, which
  syncs its upper layer: a container's). A network or FUSE file system may not pass a
  ``syncfs`` on to its server; there the caller syncs file by file.

Python has no binding for ``syncfs`` or ``fstatfs``; they are called through ``ctypes``
from the C library.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

LOCAL_KINDS = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # XFS
        0x9123683E,  # Btrfs
        0xF2F52010,  # F2FS
        0x2FC12FC1,  # ZFS
        0x01021994,  # tmpfs
        0x794C7630,  # overlayfs
    }
)
"""``statfs`` magic numbers of the file systems whose ``syncfs`` is trusted."""


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        found = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


_Calls = tuple[Callable[[int], int], Callable[[int, ctypes.Array[ctypes.c_char]], int]]


def _load() -> _Calls | None:
    if not sys.platform.startswith("linux") or not _kernel_at_least(5, 8):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs, fstatfs = libc.syncfs, libc.fstatfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    fstatfs.argtypes = [ctypes.c_int, ctypes.c_char_p]
    fstatfs.restype = ctypes.c_int
    return syncfs, fstatfs


_CALLS = _load()

AVAILABLE = _CALLS is not None
"""Whether :class:`Group` may be used here at all (Linux 5.8 or later)."""


class Group:
    """The file system of ``folder``, synced as a whole for a group of writes.

    Open it (``with``) before the group's first write; :attr:`device` is the file system
    it syncs, :attr:`usable` whether it may (a local one); :meth:`sync` writes back
    everything dirty there and raises :class:`OSError` if any of it failed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.device = -1
        self.usable = False
        self._fd: int | None = None

    def __enter__(self) -> Group:
        self._fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        self.device = os.fstat(self._fd).st_dev
        self.usable = AVAILABLE and _kind(self._fd) in LOCAL_KINDS
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sync(self) -> None:
        """Write back the file system; an error since this group was opened raises."""
        if _CALLS is None or self._fd is None or not self.usable:
            raise OSError("syncfs cannot be used here")
        if _CALLS[0](self._fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), str(self.folder))


def _kind(fd: int) -> int:
    """The ``f_type`` of the file system ``fd`` is on (0 if it cannot be told)."""
    assert _CALLS is not None
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _CALLS[1](fd, buffer) != 0:
        return 0
    # f_type is the first member, a C long (__fsword_t).
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF
