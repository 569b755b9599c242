"""Run configuration: frozen, keyword-only dataclasses, validated when built.

Options come from three layers, weakest first: built-in defaults, a TOML file
(``--config``), then command-line flags. :func:`load_toml` reads the file strictly (an
unknown key or a wrong type is a :class:`ConfigError`); the CLI merges the layers into
a plain dict and :func:`build_config` turns that into a :class:`HarvestConfig`.
The API key is not part of the configuration: it lives only in the environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from harvester.errors import ConfigError
from harvester.schemas import FEEDS
from harvester.storage import DEFAULT_MULTIPART_THRESHOLD, MIN_PART_SIZE
from harvester.windows import (
    EPOCH,
    floor_to,
    format_api,
    format_duration,
    parse_age,
    parse_duration,
    parse_instant,
)

API_KEY_ENV = "THREATGRID_API_KEY"
DEFAULT_BASE_URL = "https://panacea.threatgrid.com"
DEFAULTS: dict[str, Any] = {
    "feeds": "all",
    "base_url": DEFAULT_BASE_URL,
    "window": "1d",
    "limit": 100_000,
    "concurrency": 8,
    "rate": 10.0,
    "auth": "header",
    "prefetch": 4,
    "attempts": 8,
    "retry_timeout": 300.0,
    "request_timeout": 60.0,
    "table_format": "hive",
    "namespace": "threatgrid",
    "s3_multipart_threshold": DEFAULT_MULTIPART_THRESHOLD,
    "max_span": "366d",
    "max_page_bytes": 64 * 1024 * 1024,
    "page_budget": 256 * 1024 * 1024,
    "commit_every": 30.0,
    "lease_ttl": 120.0,
}
TABLE_FORMATS = ("hive", "iceberg")
MAINTAIN_DEFAULTS = {"older_than": "7d", "orphans_older_than": "1d"}
"""``harvester maintain``'s ages: snapshots to expire, and the orphan grace period."""
NAMESPACE = re.compile(r"^[A-Za-z0-9_]{1,255}$")
"""Names every catalog accepts for an Iceberg namespace (Glue and Athena among them)."""


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is a name every catalog (Glue, Athena) accepts."""
    if not NAMESPACE.match(namespace):
        raise ConfigError(
            f"--namespace {namespace!r} is not a valid name; use letters, digits and _"
        )
    return namespace

# TOML key -> accepted Python types. Keys match the long flags with '-' -> '_'.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "after": (str, datetime),
    "before": (str, datetime),
    "out": (str,),
    "feeds": (str, list),
    "base_url": (str,),
    "window": (str,),
    "confidence": (int,),
    "severity": (int,),
    "ioc": (str,),
    "org_only": (bool,),
    "user_only": (bool,),
    "sample": (str, list),
    "filter": (dict, list),
    "limit": (int,),
    "concurrency": (int,),
    "rate": (int, float),
    "auth": (str,),
    "prefetch": (int,),
    "attempts": (int,),
    "retry_timeout": (int, float),
    "request_timeout": (int, float),
    "s3_endpoint_url": (str,),
    "s3_multipart_threshold": (int,),
    "shard": (str,),
    "shards": (int,),
    "since_last": (bool,),
    "force": (bool,),
    "repair": (bool,),
    "lag": (str,),
    "lookback": (str,),
    "max_span": (str,),
    "max_page_bytes": (int,),
    "page_budget": (int,),
    "commit_every": (int, float),
    "lease_ttl": (int, float),
    "table_format": (str,),
    "catalog": (str,),
    "namespace": (str,),
}


@dataclass(frozen=True, kw_only=True)
class Query:
    """The query parameters that decide *which* records a feed returns.

    Two harvests of a window are interchangeable exactly when their queries are equal;
    :attr:`fingerprint` is what the manifest compares.
    """

    source: str  # the API host: records from another region are other records
    confidence: int | None = None
    severity: int | None = None
    ioc: str | None = None
    org_only: bool = False
    user_only: bool = False
    sample: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("confidence", "severity"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                raise ConfigError(f"--{name} {value} is out of range; use 0 to 100")

    def params(self) -> dict[str, str]:
        """The query-string parameters, without paging, dates or credentials."""
        out: dict[str, str] = {}
        if self.confidence is not None:
            out["confidence"] = str(self.confidence)
        if self.severity is not None:
            out["severity"] = str(self.severity)
        if self.ioc:
            out["ioc"] = self.ioc
        if self.org_only:
            out["org_only"] = "true"
        if self.user_only:
            out["user_only"] = "true"
        if self.sample:
            out["sample"] = ",".join(self.sample)
        out.update(self.filters)
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for the manifest and run report (no secret)."""
        return {"source": self.source, "params": self.params()}

    @cached_property
    def fingerprint(self) -> str:
        """A short stable hash of :meth:`describe`."""
        blob = orjson.dumps(self.describe(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), for splitting a job across machines."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count} is invalid; use I/N with 0 <= I < N"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, kw_only=True)
class HarvestConfig:
    """Everything one ``harvester run`` needs, validated."""

    after: datetime | None
    before: datetime
    out: str
    feeds: tuple[str, ...]
    base_url: str
    window: timedelta
    query: Query
    limit: int
    concurrency: int
    rate: float
    auth: str = DEFAULTS["auth"]
    prefetch: int = DEFAULTS["prefetch"]
    attempts: int = DEFAULTS["attempts"]
    retry_timeout: float = DEFAULTS["retry_timeout"]
    request_timeout: float = DEFAULTS["request_timeout"]
    s3_endpoint_url: str | None = None
    s3_multipart_threshold: int = DEFAULTS["s3_multipart_threshold"]
    shard: Shard = field(default_factory=Shard)
    since_last: bool = False
    force: bool = False
    repair: bool = False
    """``--repair``: verify the lake first and make damaged windows incomplete."""
    lookback: timedelta = timedelta(0)
    """``--lookback``: complete windows ending this close to ``before`` are harvested again."""
    max_span: timedelta = field(default_factory=lambda: parse_lag(DEFAULTS["max_span"]))
    """The longest time one paged query may cover (``--max-span``)."""
    max_page_bytes: int = DEFAULTS["max_page_bytes"]
    """The largest response body read (``--max-page-bytes``); a bigger page is asked again
    with half the limit."""
    page_budget: int = DEFAULTS["page_budget"]
    """Bytes of pages in flight at most (``--page-budget``): bounds memory with big pages."""
    commit_every: float = DEFAULTS["commit_every"]
    """Seconds between group commits (``--commit-every``): crash loss against writes."""
    lease_ttl: float = DEFAULTS["lease_ttl"]
    """Seconds a lease lives without renewal (``--lease-ttl``)."""
    table_format: str = DEFAULTS["table_format"]
    catalog: str | None = None
    """``--catalog`` (Iceberg only): a pyiceberg catalog NAME or a URI."""
    namespace: str = DEFAULTS["namespace"]

    def __post_init__(self) -> None:
        for name in ("max_page_bytes", "page_budget"):
            if getattr(self, name) < 1024:
                flag = name.replace("_", "-")
                raise ConfigError(f"--{flag} {getattr(self, name)} is too small; use at least 1024")
        for name in ("limit", "concurrency", "prefetch", "attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)} must be at least 1")
        for name in ("rate", "retry_timeout", "request_timeout", "commit_every", "lease_ttl"):
            if not getattr(self, name) > 0:
                flag = name.replace("_", "-")
                raise ConfigError(f"--{flag} {getattr(self, name)} must be greater than 0")
        if self.s3_multipart_threshold < MIN_PART_SIZE:
            raise ConfigError(
                f"--s3-multipart-threshold {self.s3_multipart_threshold} is below S3's "
                f"smallest part (5 MiB); use at least {MIN_PART_SIZE}"
            )
        if self.max_span < self.window:
            raise ConfigError(
                f"--max-span {format_duration(self.max_span)} is shorter than a window "
                f"({format_duration(self.window)}); use at least the window size"
            )
        if self.auth not in ("header", "query"):
            raise ConfigError(f"--auth {self.auth!r} is unknown; use header or query")
        if not self.feeds:
            raise ConfigError("no feeds selected; use --feeds all or a list like ips,domains")
        if self.after is None and not self.since_last:
            raise ConfigError("--after is required (flag or config file), unless --since-last")
        self._check_table_format()
        if self.after is not None and not self.after < self.before and not self.since_last:
            raise ConfigError(
                f"--after {format_api(self.after)} is not before --before "
                f"{format_api(self.before)}; swap them or widen the range"
            )

    def _check_table_format(self) -> None:
        if self.table_format not in TABLE_FORMATS:
            raise ConfigError(
                f"--table-format {self.table_format!r} is unknown; use {' or '.join(TABLE_FORMATS)}"
            )
        if self.table_format == "hive":
            if self.catalog is not None or self.namespace != DEFAULTS["namespace"]:
                raise ConfigError("--catalog and --namespace need --table-format iceberg")
            return
        if self.repair:
            raise ConfigError(
                "--repair verifies the Hive layout, and Iceberg tables record their own "
                "files; drop --repair with --table-format iceberg"
            )
        check_namespace(self.namespace)
        if self.out.startswith("s3://") and not self.catalog:
            raise ConfigError(
                f"--out {self.out} is on S3, so --table-format iceberg needs --catalog "
                "(a NAME from ~/.pyiceberg.yaml, glue, sqlite:///PATH, postgresql://... "
                "or an http(s):// REST catalog URL)"
            )

    def describe(self) -> dict[str, Any]:
        """The run's parameters as JSON-able data, for reports. Holds no secret."""
        return {
            "after": format_api(self.after) if self.after else None,
            "before": format_api(self.before),
            "out": self.out,
            "feeds": list(self.feeds),
            "base_url": self.base_url,
            "window": format_duration(self.window),
            "query": self.query.describe(),
            "limit": self.limit,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "auth": self.auth,
            "shard": str(self.shard),
            "since_last": self.since_last,
            "lookback": format_duration(self.lookback) if self.lookback else None,
            "table_format": self.table_format,
            **(
                {"catalog": self.catalog, "namespace": self.namespace}
                if self.table_format == "iceberg"
                else {}
            ),
        }


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file; reject unknown keys and wrong types with one line."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(OPTION_TYPES))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown key(s) {', '.join(unknown)}; "
            f"known keys are {', '.join(sorted(OPTION_TYPES))}"
        )
    for key, value in data.items():
        allowed = OPTION_TYPES[key]
        if isinstance(value, bool) and bool not in allowed:
            allowed = ()
        if not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in OPTION_TYPES[key])
            raise ConfigError(
                f"config file {path}: {key} is {type(value).__name__}, expected {names}"
            )
    return data


def _int(options: dict[str, Any], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not a whole number") from None


def _float(options: dict[str, Any], name: str) -> float:
    value = options[name]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not a number") from None


def parse_feeds(value: str | list[str]) -> tuple[str, ...]:
    """Parse ``all`` or a comma-separated list of feed names, rejecting unknown ones."""
    names = value if isinstance(value, list) else [p.strip() for p in value.split(",")]
    names = [n for n in names if n]
    if names == ["all"]:
        return tuple(FEEDS)
    unknown = [n for n in names if n not in FEEDS]
    if unknown:
        raise ConfigError(f"unknown feed {unknown[0]!r}; use all or some of {', '.join(FEEDS)}")
    return tuple(dict.fromkeys(names))


def parse_filters(value: Any, feeds: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Parse ``KEY=VALUE`` result restrictions and check every selected feed knows KEY."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        for item in value or []:
            key, sep, val = str(item).partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ConfigError(f"--filter {item!r} is not KEY=VALUE; e.g. --filter domain=x.com")
            pairs.append((key.strip(), val.strip()))
    for key, _ in pairs:
        lacking = [f for f in feeds if key not in FEEDS[f].restrictions]
        if lacking:
            knows = [f.name for f in FEEDS.values() if key in f.restrictions]
            hint = f"pass --feeds {','.join(knows)}" if knows else "check the key"
            raise ConfigError(
                f"--filter {key}=... is not a restriction of feed {lacking[0]}; {hint}"
            )
    return tuple(sorted(pairs))


def _samples(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(s.strip() for s in items if s.strip())


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url {value!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL}")
    if parts.query or parts.username or parts.password:
        raise ConfigError(
            "--base-url must not carry a query or credentials; use THREATGRID_API_KEY"
        )
    return value.rstrip("/")


def parse_shard(
    value: str | None, shards: int | None, env: dict[str, str], *, whole_job: bool = False
) -> Shard:
    """Work out this process's shard from ``--shard I/N`` or ``--shards N`` + the job index.

    ``whole_job`` (for ``plan``, which shows every shard's share) lets ``--shards N`` go
    without a job index.
    """
    if value:
        index, sep, count = value.partition("/")
        if not sep or not index.isdigit() or not count.isdigit():
            raise ConfigError(f"--shard {value!r} is not I/N; e.g. --shard 0/4")
        if shards is not None and shards != int(count):
            raise ConfigError(f"--shard {value} and --shards {shards} disagree; give one of them")
        return Shard(index=int(index), count=int(count))
    if shards is None:
        return Shard()
    for var in ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"):
        if env.get(var, "").strip():
            raw = env[var].strip()
            if not raw.isdigit():
                raise ConfigError(f"{var}={raw!r} is not a shard index; expected 0..{shards - 1}")
            return Shard(index=int(raw), count=shards)
    if whole_job:
        return Shard(index=0, count=shards)
    raise ConfigError(
        "--shards needs JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX, or use --shard I/N"
    )


def build_config(
    options: dict[str, Any],
    env: dict[str, str] | None = None,
    *,
    now: datetime | None = None,
    whole_job: bool = False,
) -> HarvestConfig:
    """Build and validate a :class:`HarvestConfig` from merged options.

    ``--before now`` (with an optional ``--lag``) becomes the last grid edge at or before
    ``now - lag``: a window that may still receive records is left for the next run.
    ``whole_job`` is for describing a sharded job as a whole (see :func:`parse_shard`).
    """
    env = dict(os.environ) if env is None else env
    merged = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    since_last = bool(merged.get("since_last"))
    for required in ("before", "out") if since_last else ("after", "before", "out"):
        if merged.get(required) in (None, ""):
            raise ConfigError(f"--{required} is required (flag or config file)")
    window = parse_duration(str(merged["window"]))
    lag = parse_lag(str(merged.get("lag") or "0m"))

    def instant(name: str) -> datetime | None:
        value = merged.get(name)
        if value in (None, ""):
            return None
        if isinstance(value, datetime):
            value = value.isoformat()
        if name == "before" and str(value).strip().lower() == "now":
            moment = floor_to(lagged().replace(microsecond=0), window)
        else:
            moment = parse_instant(str(value), name=f"--{name}")
            if name == "before" and since_last:
                moment = floor_to(min(moment, lagged()).replace(microsecond=0), window)
        if moment < EPOCH:
            # Windows, days and files are counted from the epoch, in whole seconds that
            # are never negative; Threat Grid holds nothing from before it anyway.
            raise ConfigError(
                f"--{name} {value} is before 1970-01-01, where the window grid starts; "
                "use a later date (Threat Grid has no records that old)"
            )
        return moment

    def lagged() -> datetime:
        try:
            return (now or datetime.now(UTC)) - lag
        except OverflowError:
            raise ConfigError(
                f"--lag {format_duration(lag)} reaches back before 1970-01-01; use a shorter lag"
            ) from None

    before = instant("before")
    assert before is not None

    feeds = parse_feeds(merged["feeds"])
    shard = parse_shard(merged.get("shard"), _int(merged, "shards"), env, whole_job=whole_job)
    # --rate is the whole job's allowance: N shards running at once share it.
    rate = _float(merged, "rate") / shard.count
    query = Query(
        source=urlsplit(_base_url(str(merged["base_url"]))).hostname or "",
        confidence=_int(merged, "confidence"),
        severity=_int(merged, "severity"),
        ioc=merged.get("ioc") or None,
        org_only=bool(merged.get("org_only")),
        user_only=bool(merged.get("user_only")),
        sample=_samples(merged.get("sample")),
        filters=parse_filters(merged.get("filter"), feeds),
    )
    return HarvestConfig(
        after=instant("after"),
        before=before,
        out=str(merged["out"]),
        feeds=feeds,
        base_url=_base_url(str(merged["base_url"])),
        window=window,
        query=query,
        limit=_int(merged, "limit") or 0,
        concurrency=_int(merged, "concurrency") or 0,
        rate=rate,
        auth=str(merged["auth"]),
        prefetch=_int(merged, "prefetch") or 0,
        attempts=_int(merged, "attempts") or 0,
        retry_timeout=_float(merged, "retry_timeout"),
        request_timeout=_float(merged, "request_timeout"),
        s3_endpoint_url=merged.get("s3_endpoint_url") or None,
        s3_multipart_threshold=_int(merged, "s3_multipart_threshold") or 0,
        shard=shard,
        since_last=since_last,
        force=bool(merged.get("force")),
        repair=bool(merged.get("repair")),
        lookback=parse_lag(str(merged.get("lookback") or "0m"), flag="--lookback"),
        max_span=parse_lag(str(merged["max_span"]), flag="--max-span"),
        max_page_bytes=_int(merged, "max_page_bytes") or 0,
        page_budget=_int(merged, "page_budget") or 0,
        commit_every=_float(merged, "commit_every"),
        lease_ttl=_float(merged, "lease_ttl"),
        table_format=str(merged["table_format"]).strip().lower(),
        catalog=str(merged["catalog"]).strip() if merged.get("catalog") else None,
        namespace=str(merged["namespace"]),
    )


def parse_lag(text: str, *, flag: str = "--lag") -> timedelta:
    """Parse a duration like ``--lag`` (``0m``, ``30m``, ``1h``, ``2d``): N of a unit."""
    return parse_age(text, name=flag)
