"""What the intel commands may use of the machine: DuckDB's memory limit.

Kept apart from :mod:`~harvester.intel.engine` so the command line can show the default
without importing DuckDB.
"""

from __future__ import annotations

import re

from harvester.errors import ConfigError

DEFAULT_MEMORY_LIMIT = "1GB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def check_memory_limit(text: str) -> str:
    """``--memory-limit`` as DuckDB reads it (``512MB``, ``2GB``, ``1.5GiB``)."""
    if not _SIZE.match(text):
        raise ConfigError(f"--memory-limit {text!r} is not a size; use e.g. 512MB or 2GB")
    return text.strip()


def memory_bytes(text: str) -> int:
    """``--memory-limit`` in bytes."""
    match = _SIZE.match(check_memory_limit(text))
    assert match is not None
    return int(float(match[1]) * _UNITS[match[2].upper()])
