"""``metadata/version-hint.text``: how DuckDB finds a table's current metadata file.

DuckDB's ``iceberg_scan`` reads a metadata JSON file, or a table folder whose
``metadata/version-hint.text`` names one. SQL and Glue catalogs keep the pointer in
the catalog and write no hint, so after every commit we write the current metadata
file's name without ``.metadata.json`` (pyiceberg names them ``NNNNN-UUID``), and the
views read it with ``version_name_format => '%s%s.metadata.json'``. A view created
before a run therefore sees the run's rows.

Shards commit at once, so a hint is written only if it names a newer metadata version
than the hint found (the ``NNNNN`` prefix counts the table's metadata versions). Two
writers can still interleave between that read and the write; the next commit, or
``harvester maintain``, puts it right. A hint is written locally through a dot-file
and a rename, on S3 by one PUT: a reader never sees half a name.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = structlog.get_logger("harvester.iceberg")

HINT_FILE = "version-hint.text"
SUFFIX = ".metadata.json"
VERSION_NAME_FORMAT = "%s%s.metadata.json"
_STEM = re.compile(r"^(\d+)-[0-9a-fA-F-]+$")


def hint_path(location: str) -> str:
    """Where the hint of the table at ``location`` lives."""
    return f"{location.rstrip('/')}/metadata/{HINT_FILE}"


def _version(stem: str | None) -> int:
    match = _STEM.match(stem or "")
    return int(match[1]) if match else -1


def local_path(location: str) -> Path | None:
    """The local path of ``location`` (a plain path or ``file:`` URI); None if remote."""
    parts = urlsplit(location)
    if parts.scheme in ("", "file"):
        return Path(parts.path if parts.scheme else location)
    return None


def read_hint(table: Table) -> str | None:
    """The stem the table's hint names, or None if there is none."""
    path = hint_path(table.location())
    local = local_path(path)
    try:
        if local is not None:
            return local.read_text(encoding="utf-8").strip()
        with table.io.new_input(path).open() as stream:
            return bytes(stream.read()).decode("utf-8").strip()
    except FileNotFoundError:
        return None


def publish_hint(table: Table) -> bool:
    """Point the hint at ``table``'s metadata file, unless it names a newer one already.

    Returns whether it wrote. Raises ``OSError`` if the hint cannot be read or written;
    callers that have already committed log it instead of failing the commit.
    """
    current = table.metadata_location.rsplit("/", 1)[-1].removesuffix(SUFFIX)
    if _version(read_hint(table)) >= _version(current):
        return False
    path = hint_path(table.location())
    local = local_path(path)
    data = current.encode("utf-8")
    if local is not None:
        staged = local.with_name(f".{HINT_FILE}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            staged.write_bytes(data)
            os.replace(staged, local)
        finally:
            staged.unlink(missing_ok=True)
    else:
        with table.io.new_output(path).create(overwrite=True) as stream:
            stream.write(data)
    return True


def publish_hint_quietly(table: Table) -> None:
    """:func:`publish_hint`, logging instead of raising: the commit it follows stands."""
    try:
        publish_hint(table)
    except OSError as exc:
        log.warning("iceberg.hint_failed", table=".".join(table.name()), error=str(exc))
