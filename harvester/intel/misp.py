"""MISP: a feed directory a MISP instance subscribes to (``manifest.json``, events, hashes).

**What an event is.** One event holds the indicators of one type first seen in one UTC
month: "Threat Grid domain indicators first seen 2024-01". An indicator's
``first_seen`` does not move as new sightings arrive, so it stays in its event from one
export to the next, and a month in the past stops growing. A month of more than
:data:`EVENT_LIMIT` indicators is split by a hash of the value into 2, 4, 8...
events (the fewest that keep each within the limit): "(2 of 4)".

**Identifiers.** An event's UUID is a UUIDv5 of (type, month, split); an attribute's is
a UUIDv5 of its event's UUID and its value. Both are the same in every export of the
same lake with the same filters. An indicator changes event, and so UUID, only when a
re-harvest moves its ``first_seen`` to another month or its month is split anew; MISP
then sees a new attribute in the new event.

**Attributes** carry ``to_ids: true``, ``first_seen``, ``last_seen`` and, as
``timestamp``, the last sighting, so MISP updates an event when it has new sightings.
The comment holds the counts and the behaviour indicators. The TLP level is the
event's ``tlp:`` tag.

Events are written one at a time, from rows DuckDB sorts by event: memory does not
grow with the export. :func:`write_feed` writes into a local folder; the caller
publishes the files, ``manifest.json`` last.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.intel.engine import Engine
from harvester.intel.ids import derived
from harvester.intel.schema import Indicator

EVENT_LIMIT = 10_000
HASH_BITS = 32
MANIFEST = "manifest.json"
HASHES = "hashes.csv"
ORG = {"name": "Cisco Threat Grid (threatgrid-harvester)", "uuid": str(derived("misp", "org"))}

# type -> (MISP attribute type, category)
MISP_TYPES = {
    "domain": ("domain", "Network activity"),
    "ip": ("ip-dst", "Network activity"),
    "url": ("url", "Network activity"),
    "path": ("filename", "Artifacts dropped"),
    "sha256": ("sha256", "Artifacts dropped"),
    "md5": ("md5", "Artifacts dropped"),
    "registry_key": ("regkey", "Persistence mechanism"),
    "sample_sha256": ("sha256", "Payload delivery"),
}

_ROWS = pa.schema(
    [
        ("type", pa.string()),
        ("month", pa.string()),
        ("hash", pa.int64()),
        ("value", pa.string()),
        ("first_seen", pa.int64()),
        ("last_seen", pa.int64()),
        ("sightings", pa.int64()),
        ("samples", pa.int64()),
        ("max_severity", pa.int32()),
        ("max_confidence", pa.int32()),
        ("iocs", pa.list_(pa.string())),
        ("feeds", pa.list_(pa.string())),
    ]
)
_CHUNK = 8192


def value_hash(value: str) -> int:
    """32 bits of the value's SHA-256: which split of its month an indicator falls in."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:4], "big")


def event_uuid(kind: str, month: str, bits: int, split: int) -> uuid.UUID:
    """The UUID of split ``split`` (of ``2**bits``) of ``kind``'s month ``month``."""
    return derived("misp", "event", kind, month, str(bits), str(split))


def attribute_uuid(event: uuid.UUID, value: str) -> uuid.UUID:
    """The UUID of ``value``'s attribute in ``event``."""
    return uuid.uuid5(event, value)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def attribute(event: uuid.UUID, kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """A MISP attribute for one staged row (stamps in epoch seconds)."""
    misp_type, category = MISP_TYPES[kind]
    comment = f"Threat Grid: {row['sightings']} sighting(s) in {row['samples']} sample(s)"
    if row["max_severity"] is not None:
        comment += f", max severity {row['max_severity']}"
    if row["max_confidence"] is not None:
        comment += f", max confidence {row['max_confidence']}"
    comment += f"; feeds: {', '.join(row['feeds'])}"
    if row["iocs"]:
        comment += f"; behaviour indicators: {', '.join(row['iocs'])}"
    return {
        "uuid": str(attribute_uuid(event, row["value"])),
        "type": misp_type,
        "category": category,
        "value": row["value"],
        "to_ids": True,
        "timestamp": str(row["last_seen"]),
        "first_seen": _iso(row["first_seen"]),
        "last_seen": _iso(row["last_seen"]),
        "comment": comment,
        "disable_correlation": False,
        "deleted": False,
    }


@dataclass(frozen=True, kw_only=True)
class EventMeta:
    """One event file written, and what the manifest says of it."""

    path: Path
    uuid: str
    info: str
    date: str
    timestamp: int
    attributes: int

    def manifest_entry(self, tlp: str) -> dict[str, Any]:
        """The event's entry in ``manifest.json``."""
        return {
            "Orgc": ORG,
            "Tag": _tags(tlp),
            "info": self.info,
            "date": self.date,
            "analysis": "2",
            "threat_level_id": "4",
            "timestamp": str(self.timestamp),
        }


def _tags(tlp: str) -> list[dict[str, str]]:
    return [{"name": f"tlp:{tlp}"}]


def manifest(events: Iterable[EventMeta], tlp: str) -> bytes:
    """``manifest.json``: every event's uuid and summary."""
    entries = {event.uuid: event.manifest_entry(tlp) for event in events}
    return orjson.dumps(entries, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def stage_rows(indicators: Iterable[Indicator], path: Path) -> int:
    """Write the exported indicators, with their month and hash, for DuckDB to sort."""
    count = 0
    columns: dict[str, list[Any]] = {name: [] for name in _ROWS.names}
    with pq.ParquetWriter(path, _ROWS, compression="zstd") as writer:
        for ind in indicators:
            for name, value in (
                ("type", ind.type),
                ("month", ind.first_seen.strftime("%Y-%m")),
                ("hash", value_hash(ind.value)),
                ("value", ind.value),
                ("first_seen", int(ind.first_seen.timestamp())),
                ("last_seen", int(ind.last_seen.timestamp())),
                ("sightings", ind.sightings),
                ("samples", ind.samples),
                ("max_severity", ind.max_severity),
                ("max_confidence", ind.max_confidence),
                ("iocs", list(ind.iocs)),
                ("feeds", list(ind.feeds)),
            ):
                columns[name].append(value)
            count += 1
            if len(columns["type"]) >= _CHUNK:
                writer.write_table(pa.table(columns, schema=_ROWS))
                columns = {name: [] for name in _ROWS.names}
        writer.write_table(pa.table(columns, schema=_ROWS))
    return count


def plan_splits(engine: Engine, rows: Path) -> dict[tuple[str, str], int]:
    """(type, month) -> bits: the fewest hash bits keeping every split within the limit."""
    counts = engine.rows(
        "SELECT type, month, count(*) FROM read_parquet($rows) GROUP BY ALL",
        {"rows": str(rows)},
    )
    bits = {}
    for kind, month, count in counts:
        need = max(0, math.ceil(math.log2(count / EVENT_LIMIT))) if count > EVENT_LIMIT else 0
        while need < HASH_BITS and _largest(engine, rows, kind, month, need) > EVENT_LIMIT:
            need += 1
        bits[kind, month] = need
    return bits


def _largest(engine: Engine, rows: Path, kind: str, month: str, bits: int) -> int:
    found = engine.rows(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM read_parquet($rows) "
        "WHERE type = $type AND month = $month GROUP BY hash >> $shift)",
        {"rows": str(rows), "type": kind, "month": month, "shift": HASH_BITS - bits},
    )
    return int(found[0][0] or 0)


def write_feed(engine: Engine, rows: Path, folder: Path, *, tlp: str) -> list[EventMeta]:
    """Write every event file and ``hashes.csv`` into ``folder``, an event at a time."""
    bits = plan_splits(engine, rows)
    splits = pa.table(
        {
            "type": [k for k, _ in bits],
            "month": [m for _, m in bits],
            "bits": [bits[key] for key in bits],
        },
        schema=pa.schema([("type", pa.string()), ("month", pa.string()), ("bits", pa.int64())]),
    )
    ordered = folder / ".sorted.parquet"
    engine.write(
        f"SELECT r.*, s.bits, r.hash >> ({HASH_BITS} - s.bits) AS split "
        "FROM read_parquet($rows) AS r JOIN splits AS s USING (type, month) "
        "ORDER BY r.type, r.month, split, r.value",
        ordered,
        _ROWS.append(pa.field("bits", pa.int64())).append(pa.field("split", pa.int64())),
        params={"rows": str(rows)},
        tables={"splits": splits},
    )
    events: list[EventMeta] = []
    writer: _EventWriter | None = None
    try:
        with open(folder / HASHES, "wb") as hashes:
            for batch in pq.ParquetFile(ordered).iter_batches(batch_size=_CHUNK):
                for row in batch.to_pylist():
                    key = (row["type"], row["month"], row["bits"], row["split"])
                    if writer is None or writer.key != key:
                        if writer is not None:
                            events.append(writer.close())
                        writer = _EventWriter(folder, key, tlp=tlp)
                    writer.add(row, hashes)
            if writer is not None:
                events.append(writer.close())
                writer = None
    finally:
        if writer is not None:
            writer.abandon()
        ordered.unlink(missing_ok=True)
    return events


class _EventWriter:
    """One event file: attributes streamed in, the event's other fields written last."""

    def __init__(self, folder: Path, key: tuple[str, str, int, int], *, tlp: str) -> None:
        self.key = key
        kind, month, bits, split = key
        self.uuid = event_uuid(kind, month, bits, split)
        self.path = folder / f"{self.uuid}.json"
        self.info = f"Threat Grid {kind} indicators first seen {month}"
        if bits:
            self.info += f" ({split + 1} of {2**bits})"
        self.tlp = tlp
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self._handle: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        # JSON objects are unordered: the attributes first, the fields they decide after
        self._handle.write(b'{"Event":{"Attribute":[\n')

    def add(self, row: dict[str, Any], hashes: IO[bytes]) -> None:
        """Append one attribute, and its line of ``hashes.csv``."""
        data = orjson.dumps(attribute(self.uuid, self.key[0], row))
        self._handle.write(data if not self.count else b",\n" + data)
        self.count += 1
        first, last = row["first_seen"], row["last_seen"]
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)
        digest = hashlib.md5(row["value"].encode(), usedforsecurity=False).hexdigest()
        hashes.write(f"{digest},{self.uuid}\n".encode())

    def close(self) -> EventMeta:
        """Write the event's own fields and close the file."""
        if self.first is None or self.last is None:
            raise ValueError("an event without attributes")
        meta = EventMeta(
            path=self.path,
            uuid=str(self.uuid),
            info=self.info,
            date=datetime.fromtimestamp(self.first, UTC).date().isoformat(),
            timestamp=self.last,
            attributes=self.count,
        )
        fields = {
            "uuid": meta.uuid,
            "info": meta.info,
            "date": meta.date,
            "timestamp": str(meta.timestamp),
            "publish_timestamp": str(meta.timestamp),
            "published": True,
            "analysis": "2",
            "threat_level_id": "4",
            "Orgc": ORG,
            "Tag": _tags(self.tlp),
        }
        self._handle.write(b"\n]," + orjson.dumps(fields)[1:] + b"}\n")
        self._handle.close()
        return meta

    def abandon(self) -> None:
        """Close the file unfinished (the export failed)."""
        self._handle.close()
