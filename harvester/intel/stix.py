r"""STIX 2.1: one bundle of ``indicator`` objects, written as a stream.

Per indicator: ``pattern_type: stix``, ``valid_from`` = ``created`` = ``first_seen``,
``modified`` = ``last_seen`` (so one lake gives one bundle, byte for byte, and a TIP
sees a newer ``modified`` when new sightings arrive), ``indicator_types``
``malicious-activity``, the behaviour indicators as ``labels`` and in the
``description``, ``confidence`` = ``max_confidence``, and the chosen TLP marking. Ids
are UUIDv5 of (type, value) (:mod:`~harvester.intel.ids`). Sightings, samples, the
maximum severity and the feeds travel in a STIX 2.1 property extension (STIX's way for
custom properties), defined in the bundle with its author, an ``identity``.

Patterns, one comparison per type (``path`` as below)::

    domain         [domain-name:value = '...']
    ip             [ipv4-addr:value = '...'] or [ipv6-addr:value = '...']
    url            [url:value = '...']
    sha256         [file:hashes.'SHA-256' = '...']   (sample_sha256 too)
    md5            [file:hashes.MD5 = '...']
    registry_key   [windows-registry-key:key = '...']
    path           [file:name = 'x.exe' AND file:parent_directory_ref.path = 'C:\\Temp']

A path is a file's name in a directory, which STIX models as a ``file`` whose
``parent_directory_ref`` is a ``directory``: the pattern matches that file by both. A
path is cut at its last separator (``\`` or ``/`` when it holds a backslash, else
``/``); a bare name gives ``[file:name = ...]``, and a path ending in a separator,
a directory, ``[directory:path = ...]``. A root keeps its separator (``/``, ``C:\``).

String literals escape exactly what the pattern grammar demands: ``\`` and ``'``.
Everything else, line breaks and any Unicode included, stands as it is.

The bundle is written object by object, never held in memory; its own id comes last
(JSON objects are unordered) and digests the objects, so equal bundles have equal ids.
"""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from harvester.intel.ids import derived, indicator_uuid
from harvester.intel.schema import Indicator

TLP_IDS = {
    "white": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "amber": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}


def tlp_marking(level: str) -> dict[str, Any]:
    """STIX 2.1's predefined TLP marking definition for ``level`` (white..red)."""
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP_IDS[level],
        "created": "2017-01-20T00:00:00.000Z",
        "definition_type": "tlp",
        "name": f"TLP:{level.upper()}",
        "definition": {"tlp": level},
    }


def literal(value: str) -> str:
    """``value`` as a STIX pattern string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_path(path: str) -> tuple[str | None, str | None]:
    """``(directory, name)`` of a path; either is None when the path has none."""
    separators = "\\/" if "\\" in path else "/"
    cut = max(path.rfind(s) for s in separators)
    if cut < 0:
        return None, path
    directory, name = path[:cut], path[cut + 1 :]
    if not name:
        return path, None  # a directory itself: "/var/tmp/"
    if not directory or directory.endswith(":"):
        directory = path[: cut + 1]  # a root: "/", "C:\"
    return directory, name


def pattern(kind: str, value: str) -> str:
    """The STIX pattern matching indicator (``kind``, ``value``).

    An ``ip`` must be an address (ValueError otherwise): it picks IPv4 or IPv6.
    """
    if kind == "path":
        directory, name = split_path(value)
        if name is None:
            return f"[directory:path = {literal(value)}]"
        if directory is None:
            return f"[file:name = {literal(name)}]"
        return (
            f"[file:name = {literal(name)} AND "
            f"file:parent_directory_ref.path = {literal(directory)}]"
        )
    if kind == "ip":
        family = ipaddress.ip_address(value).version
        return f"[ipv{family}-addr:value = {literal(value)}]"
    path = {
        "domain": "domain-name:value",
        "url": "url:value",
        "sha256": "file:hashes.'SHA-256'",
        "sample_sha256": "file:hashes.'SHA-256'",
        "md5": "file:hashes.MD5",
        "registry_key": "windows-registry-key:key",
    }[kind]
    return f"[{path} = {literal(value)}]"


def stix_time(instant: datetime) -> str:
    """A STIX timestamp with milliseconds, in UTC."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{instant.microsecond // 1000:03d}Z"
    )


def describe(ind: Indicator) -> str:
    """A sentence for people: where, when and how often, and the behaviour indicators."""
    text = (
        f"{ind.type} seen by Cisco Threat Grid in {ind.samples} sample(s), {ind.sightings} "
        f"sighting(s), from {stix_time(ind.first_seen)} to {stix_time(ind.last_seen)}; "
        f"feeds: {', '.join(ind.feeds)}"
    )
    if ind.max_severity is not None:
        text += f"; max severity {ind.max_severity}"
    if ind.max_confidence is not None:
        text += f"; max confidence {ind.max_confidence}"
    if ind.iocs:
        text += f"; behaviour indicators: {', '.join(ind.iocs)}"
    return text + "."


AUTHOR_ID = f"identity--{derived('stix', 'identity')}"
EXTENSION_ID = f"extension-definition--{derived('stix', 'extension', 'figures', '1')}"
_DEFINED = "2024-01-01T00:00:00.000Z"  # when the two objects below were defined; fixed


def author() -> dict[str, Any]:
    """The ``identity`` that creates the indicators and the extension (a system)."""
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": AUTHOR_ID,
        "created": _DEFINED,
        "modified": _DEFINED,
        "name": "threatgrid-harvester",
        "description": "Indicators computed from the whole history of Cisco Threat Grid's "
        "IOC feeds by threatgrid-harvester.",
        "identity_class": "system",
    }


def extension() -> dict[str, Any]:
    """The property extension that carries Threat Grid's figures on each indicator."""
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": EXTENSION_ID,
        "created_by_ref": AUTHOR_ID,
        "created": _DEFINED,
        "modified": _DEFINED,
        "name": "threatgrid-harvester indicator figures",
        "description": "What Cisco Threat Grid's IOC feeds recorded of an indicator.",
        "schema": "Properties: indicator_type (string: domain, ip, url, path, sha256, md5, "
        "registry_key or sample_sha256), sightings (integer: records carrying the value), "
        "samples (integer: distinct analysed samples), max_severity (integer, if known), "
        "feeds (list of string: the Threat Grid feeds it was seen in).",
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    }


def indicator_object(ind: Indicator, marking: str) -> dict[str, Any]:
    """The STIX ``indicator`` for one row, marked with ``marking`` (a definition id)."""
    created = stix_time(ind.first_seen)
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{indicator_uuid(ind.type, ind.value)}",
        "created_by_ref": AUTHOR_ID,
        "created": created,
        "modified": stix_time(ind.last_seen),
        "name": ind.value,
        "description": describe(ind),
        "indicator_types": ["malicious-activity"],
        "pattern": pattern(ind.type, ind.value),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": created,
    }
    if ind.iocs:
        obj["labels"] = list(ind.iocs)
    if ind.max_confidence is not None and 0 <= ind.max_confidence <= 100:
        obj["confidence"] = ind.max_confidence
    obj["object_marking_refs"] = [marking]
    figures: dict[str, Any] = {
        "extension_type": "property-extension",
        "indicator_type": ind.type,
        "sightings": ind.sightings,
        "samples": ind.samples,
    }
    if ind.max_severity is not None:
        figures["max_severity"] = ind.max_severity
    figures["feeds"] = list(ind.feeds)
    obj["extensions"] = {EXTENSION_ID: figures}
    return obj


class BundleWriter:
    """Writes one bundle to a binary file, an object at a time."""

    def __init__(self, handle: IO[bytes], *, tlp: str) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self._marking = TLP_IDS[tlp]
        self.count = 0
        handle.write(b'{"type":"bundle","objects":[\n')
        self._put(tlp_marking(tlp), first=True)
        self._put(author(), first=False)
        self._put(extension(), first=False)

    def add(self, ind: Indicator) -> None:
        """Append the indicator object of ``ind``."""
        self._put(indicator_object(ind, self._marking), first=False)
        self.count += 1

    def close(self) -> None:
        """End the bundle with its id (the digest of its objects)."""
        bundle = derived("bundle", self._digest.hexdigest())
        self._handle.write(b'\n],"id":"bundle--' + str(bundle).encode() + b'"}\n')

    def _put(self, obj: dict[str, Any], *, first: bool) -> None:
        data = orjson.dumps(obj)
        self._digest.update(data)
        self._handle.write(data if first else b",\n" + data)
