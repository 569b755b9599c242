"""Make a group of local files durable at once: Linux's ``syncfs(2)``, where there is one.

A group commit writes many small files together (a sparse month is a file per day).
Syncing each file and then its folder costs two journal commits per file; ``syncfs``
writes back everything dirty on one file system in a single pass. On this project's
ext4 test machine, 2,562 day folders and files were created, written and renamed in
0.3-0.5 s with one ``syncfs`` per 31 files, against 1.2-2.8 s with an ``fsync`` of each
file and folder, and 0.8-0.9 s with no sync at all (a growing journal slows every
metadata call).

Since Linux 5.8 ``syncfs`` reports a write-back error that happened on the file system
since the caller's descriptor was opened, so an error is not lost. Python has no
binding for it; it is called through ``ctypes`` from the C library. Where there is none
(macOS, an unusual libc), :data:`AVAILABLE` is false and callers sync file by file.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def _load() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load()

AVAILABLE = _SYNCFS is not None
"""Whether :func:`sync` can be used here."""


def sync(folders: Iterable[Path]) -> None:
    """Write back every file system that holds one of ``folders``; raise OSError if any fails.

    Each file system is synced once, however many of the folders it holds.
    """
    if _SYNCFS is None:
        raise OSError("syncfs is not available here")
    seen: set[int] = set()
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            device = os.fstat(fd).st_dev
            if device in seen:
                continue
            seen.add(device)
            if _SYNCFS(fd) != 0:
                number = ctypes.get_errno()
                raise OSError(number, os.strerror(number), str(folder))
        finally:
            os.close(fd)
