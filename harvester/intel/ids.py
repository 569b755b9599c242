"""Deterministic identifiers for exported objects (UUIDv5 in one fixed namespace).

An indicator's id depends only on its (type, value): exporting the same lake twice,
or a grown lake later, names the same indicator the same way, so a TIP updates the
object it already holds instead of adding a duplicate.
"""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("1d3297e5-580e-4a6a-9359-00e68e165192")
"""threatgrid-harvester's UUIDv5 namespace; never change it (every id would change)."""


def derived(*parts: str) -> uuid.UUID:
    """The UUIDv5 of ``parts`` (joined by a separator no type or kind name contains)."""
    return uuid.uuid5(NAMESPACE, "\x1f".join(parts))


def indicator_uuid(kind: str, value: str) -> uuid.UUID:
    """The id of indicator (``kind``, ``value``)."""
    return derived("indicator", kind, value)
