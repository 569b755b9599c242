"""What an export leaves out, and why: the options of ``harvester export``, parsed.

Rows are filtered in two steps. Scores and ``--since`` are columns, tested a batch at a
time with Arrow (:meth:`ExportFilter.mask`); the rest looks at each value
(:meth:`ExportFilter.reason`) and names why a value is left out, so the summary can
count it:

* ``not_global``: an ``ip`` for which ``ipaddress.ip_address(value).is_global`` does not
  hold (private, loopback, link-local, documentation ranges...), unless
  ``--include-private``. Sandboxes talk to such addresses; blocking them would hurt.
* ``not_an_address``: an ``ip`` value that is no IP address at all. It cannot be typed
  as IPv4 or IPv6 and is left out of every format.
* ``allowlisted``: the value is on ``--allowlist``. A domain there also covers its
  subdomains, compared without case and without a trailing dot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from harvester.errors import ConfigError
from harvester.intel.schema import TYPES
from harvester.schemas import TIMESTAMP
from harvester.windows import parse_age, parse_instant

TLP_LEVELS = ("white", "green", "amber", "red")
TLP_ALIASES = {"clear": "white"}  # TLP 2.0's name for white
DEFAULT_TLP = "white"


def parse_tlp(text: str) -> str:
    """``--tlp``: one of white, green, amber, red (``clear`` is white)."""
    level = text.strip().lower()
    level = TLP_ALIASES.get(level, level)
    if level not in TLP_LEVELS:
        raise ConfigError(
            f"--tlp {text!r} is not a TLP level; use white, clear, green, amber or red"
        )
    return level


def parse_types(text: str | None) -> tuple[str, ...]:
    """``--types``: a comma-separated subset of the indicator types, or all of them."""
    if text is None or text.strip() in ("", "all"):
        return TYPES
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in TYPES]
    if unknown:
        raise ConfigError(f"--types: unknown type {unknown[0]!r}; use some of {','.join(TYPES)}")
    return tuple(kind for kind in TYPES if kind in wanted)


def parse_score(text: str | None, *, name: str) -> int | None:
    """``--min-severity``/``--min-confidence``: a whole number, or None when not given."""
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{name} {text!r} is not a whole number; use e.g. {name} 80") from None


def parse_since(text: str | None, *, now: datetime) -> datetime | None:
    """``--since``: a date or instant (``2024-01-01``), or a span back from ``now`` (``30d``)."""
    if text is None:
        return None
    raw = text.strip()
    if raw and raw[-1] in "dhm" and raw[:-1].isdigit():
        age = parse_age(raw, name="--since")
        try:
            return now - age
        except OverflowError:
            return datetime.min.replace(tzinfo=UTC)  # further back than any date: everything
    try:
        return parse_instant(raw, name="--since")
    except ConfigError:
        raise ConfigError(
            f"--since {text!r} is neither a date nor a duration; use e.g. 2024-01-01, "
            "2024-01-01T12:00:00Z, 30d or 12h"
        ) from None


@dataclass(frozen=True, kw_only=True)
class Allowlist:
    """Values never to export: exact values, and domains (with their subdomains)."""

    values: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if any(d != _domain_key(d) for d in self.domains):
            raise ValueError("allowlisted domains must be lower case without a trailing dot")

    @classmethod
    def from_lines(cls, lines: list[str]) -> Allowlist:
        """One value per line; blank lines and ``#`` comments are skipped."""
        values = {line.strip() for line in lines}
        values = {v for v in values if v and not v.startswith("#")}
        return cls(values=frozenset(values), domains=frozenset(_domain_key(v) for v in values))

    @classmethod
    def load(cls, path: str) -> Allowlist:
        """Read ``--allowlist FILE`` (UTF-8)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--allowlist {path}: no such file; give a file of values") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--allowlist {path} cannot be read ({exc}); fix the file") from exc
        return cls.from_lines(text.splitlines())

    def covers(self, kind: str, value: str) -> bool:
        """True when ``value`` (of type ``kind``) must not be exported."""
        if value in self.values:
            return True
        if kind != "domain" or not self.domains:
            return False
        name = _domain_key(value)
        while True:
            if name in self.domains:
                return True
            _, dot, name = name.partition(".")
            if not dot:
                return False


def _domain_key(name: str) -> str:
    return name.strip().lower().rstrip(".")


@dataclass(frozen=True, kw_only=True)
class ExportFilter:
    """The rows an export keeps."""

    types: tuple[str, ...] = TYPES
    min_severity: int | None = None
    min_confidence: int | None = None
    since: datetime | None = None
    """Keep indicators with ``last_seen >= since``."""
    include_private: bool = False
    allowlist: Allowlist = field(default_factory=Allowlist)

    def __post_init__(self) -> None:
        if not self.types or any(kind not in TYPES for kind in self.types):
            raise ValueError(f"types must be a non-empty subset of {TYPES}")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("since must be timezone-aware")

    def mask(self, batch: pa.RecordBatch) -> pa.Array | None:
        """The rows of ``batch`` passing the column filters, or None when all pass."""
        tests = []
        for column, minimum in (
            ("max_severity", self.min_severity),
            ("max_confidence", self.min_confidence),
        ):
            if minimum is not None:
                tests.append(pc.greater_equal(batch.column(column), pa.scalar(minimum, pa.int32())))
        if self.since is not None:
            stamps = batch.column("last_seen")
            since = pa.scalar(self.since, TIMESTAMP).cast(stamps.type)
            tests.append(pc.greater_equal(stamps, since))
        if not tests:
            return None
        combined = tests[0]
        for test in tests[1:]:
            combined = pc.and_kleene(combined, test)
        return pc.fill_null(combined, False)  # an unknown score does not reach a minimum

    def reason(self, kind: str, value: str) -> str | None:
        """Why ``value`` is left out, or None if it is exported."""
        if kind == "ip":
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                return "not_an_address"
            if not self.include_private and not address.is_global:
                return "not_global"
        if self.allowlist.covers(kind, value):
            return "allowlisted"
        return None
