"""A deterministic, seedable dataset of IOC feed items, and the ground truth of queries.

Each (feed, UTC day) is generated on its own from a seed derived with BLAKE2 from
``(spec.seed, feed, day)``, so a day never depends on which days were asked for first,
nor on Python's hash randomisation. Items look like the API's: the common fields, the
feed's own fields, now and then a null own field or an undocumented extra field, and
Unicode, IPv6 and over-long values. Every day with records has records exactly at
00:00:00 and 23:59:59, at whole hours and quarter hours, and several sharing a second,
because those are where window and paging bugs hide. ``DatasetSpec.item_padding`` gives
every item an undocumented ``padding`` string, to make pages as large as a test needs.

The dataset can also grow after the fact, as the real one does: :meth:`Dataset.add_records`
adds records to a past day (late arrivals) and :meth:`Dataset.insert_at_head` adds records
at the newest end of a query's result (what the server's ``insert_while_paging`` fault
uses). Added records are built by the same generators, from a seed derived from
``(spec.seed, feed, n)`` for the feed's n-th addition, and stay for good: ``day``,
``select`` and ``truth`` include them. Among records of the same second, added ones come
first, the latest addition first, so an addition at the head shifts every later offset.
``generation`` and ``version(feed)`` change with every addition, for caches built on top.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import json
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

from harvester.schemas import FEEDS

DAY_SECONDS = 86_400
DEFAULT_SCORE = 80
_ONE_DAY = timedelta(days=1)
_NO_RESTRICTIONS: Mapping[str, str] = MappingProxyType({})


class SimRecord(NamedTuple):
    """One served item, with the hidden facts ``org_only``/``user_only`` filter on."""

    ts: int
    """Epoch seconds of ``item["timestamp"]``."""
    item: dict[str, Any]
    """Exactly the JSON object the server sends; shared, never mutate it."""
    org: bool
    """The sample was submitted by the caller's organisation."""
    user: bool
    """The sample was submitted by the caller (implies ``org``)."""


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """What to generate. Two datasets with equal specs hold identical records.

    ``rows_per_day`` is the mean per feed and UTC day; each (feed, day) gets between half
    and one and a half times it, and about one day in twenty gets none. ``dense_days``
    overrides the count for given days (``"YYYY-MM-DD" -> rows``), e.g. for a benchmark.
    ``now`` stands in for the present when a query gives neither ``after`` nor ``before``.
    ``item_padding`` > 0 gives every item an undocumented ``"padding"`` string field of
    that many ASCII characters (so a page's size is about ``limit * item_padding`` bytes).
    ``lone_surrogates`` names (feed, ``YYYY-MM-DD``) days whose newest record carries an
    ``ioc`` of one lone UTF-16 surrogate (U+D800, escaped in the JSON): valid JSON, but a
    string no UTF-8 file can hold -- the record a lake can never store.
    """

    seed: int = 7
    rows_per_day: int = 300
    feeds: tuple[str, ...] = tuple(FEEDS)
    extra_field_rate: float = 0.02
    mistyped_rate: float = 0.0
    null_rate: float = 0.03
    dense_days: Mapping[str, int] = field(default_factory=dict, hash=False)
    now: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    item_padding: int = 0
    lone_surrogates: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.feeds) - set(FEEDS))
        if unknown:
            raise ValueError(f"unknown feeds {unknown}; known: {sorted(FEEDS)}")
        if self.rows_per_day < 0:
            raise ValueError("rows_per_day must be >= 0")
        for feed, day in self.lone_surrogates:
            if feed not in FEEDS:
                raise ValueError(f"lone_surrogates: unknown feed {feed!r}")
            date.fromisoformat(day)
        padding = self.item_padding
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"item_padding must be an integer >= 0, not {padding!r}")
        rates = (self.extra_field_rate, self.null_rate, self.mistyped_rate)
        if not all(0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("extra_field_rate, null_rate and mistyped_rate must be within 0..1")
        dense: dict[str, int] = {}
        for day, rows in dict(self.dense_days).items():
            if rows < 0:
                raise ValueError(f"dense_days[{day!r}] must be >= 0")
            dense[date.fromisoformat(day).isoformat()] = rows
        # Normalised and read-only, so a frozen spec cannot change under a cache.
        object.__setattr__(self, "dense_days", MappingProxyType(dense))


class Dataset:
    """The records of a :class:`DatasetSpec`, generated lazily per (feed, UTC day).

    Days live in an LRU cache of about ``max_cached_rows`` records and are regenerated,
    identically, after eviction; records added later (:meth:`add_records`,
    :meth:`insert_at_head`) are kept apart and merged in again. Safe to share between the
    server's thread and tests.
    """

    def __init__(self, spec: DatasetSpec | None = None, *, max_cached_rows: int = 3_000_000):
        self._spec = spec or DatasetSpec()
        self._max_rows = max_cached_rows
        self._cache: OrderedDict[tuple[str, date], tuple[SimRecord, ...]] = OrderedDict()
        self._cached_rows = 0
        self._lock = threading.Lock()
        # Added records per (feed, day), the latest addition first; never evicted.
        self._added: dict[tuple[str, date], list[SimRecord]] = {}
        self._additions = dict.fromkeys(FEEDS, 0)
        self._versions = dict.fromkeys(FEEDS, 0)
        self._generation = 0

    @property
    def spec(self) -> DatasetSpec:
        """The spec the records are generated from."""
        return self._spec

    @property
    def generation(self) -> int:
        """A counter that grows whenever records are added to any feed."""
        return self._generation

    def version(self, feed: str) -> int:
        """A counter that grows whenever records are added to ``feed``."""
        return self._versions[feed]

    def day(self, feed: str, day: date) -> Sequence[SimRecord]:
        """All records of ``feed`` on UTC ``day``, newest first, ties in a fixed order."""
        if feed not in FEEDS:
            raise ValueError(f"unknown feed {feed!r}")
        key = (feed, day)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        records = _generate(self._spec, feed, day) if feed in self._spec.feeds else ()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:  # another thread got here first, maybe with additions
                return cached
            # Merged under the lock, so an addition made meanwhile is not lost.
            added = self._added.get(key)
            if added:
                records = tuple(sorted((*added, *records), key=_newest_first))
            self._cache[key] = records
            self._cached_rows += len(records)
            while self._cached_rows > self._max_rows and len(self._cache) > 1:
                self._cached_rows -= len(self._cache.popitem(last=False)[1])
        return records

    def add_records(
        self, feed: str, span: date | tuple[datetime, datetime], count: int
    ) -> list[dict[str, Any]]:
        """Add ``count`` records to ``feed`` at random seconds of ``span``; return copies.

        ``span`` is a UTC day or a half-open ``(start, end)`` of aware datetimes. The records
        look like generated ones (scores of every level, so some fall under the API's
        default of 80) and stay part of the dataset: late arrivals, for ``--lookback``.
        """
        if isinstance(span, datetime) or not isinstance(span, date | tuple):
            raise ValueError(f"span must be a date or a (start, end) tuple, not {span!r}")
        if isinstance(span, date):
            start = datetime(span.year, span.month, span.day, tzinfo=UTC)
            end = start + _ONE_DAY
        else:
            start, end = span
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("the span's start and end must be timezone-aware")
        lo, hi = math.ceil(start.timestamp()), math.ceil(end.timestamp()) - 1
        if lo > hi:
            raise ValueError(f"the span {start} .. {end} holds no whole second")
        rng, _ = self._next_addition(feed, count)
        made = [_fresh(self._spec, feed, rng, lo + int(rng.random() * (hi - lo + 1)))
                for _ in range(count)]
        return self._store(feed, made)

    def insert_at_head(
        self,
        feed: str,
        count: int,
        *,
        after: datetime | None,
        before: datetime | None,
        after_inclusive: bool,
        before_inclusive: bool,
        confidence: int = DEFAULT_SCORE,
        severity: int = DEFAULT_SCORE,
        ioc: str | None = None,
        org_only: bool = False,
        user_only: bool = False,
        sample: Sequence[str] = (),
        restrictions: Mapping[str, str] = _NO_RESTRICTIONS,
    ) -> list[dict[str, Any]]:
        """Add ``count`` records at the head of this query's result; return copies.

        The query is that of :meth:`select`. Each record's second is drawn between the
        newest record the query now returns (or the query's first second, if none) and
        its last second, so every added record comes before all the query returned, and
        every later offset moves by ``count``. The records pass the query's filters: the
        scores are drawn at or above its levels, ``ioc`` is the one asked for, and the
        sample (for ``sample``/``org_only``/``user_only``) and the feed's own fields (for a
        restriction) are those of a random record the query returns. Nothing is added
        when the range holds no second.
        """
        lo, hi = _span(after, before, after_inclusive, before_inclusive, self._spec.now)
        rng, n = self._next_addition(feed, count)
        if lo > hi or n == 0:
            return []
        current = self.select(
            feed,
            after=after,
            before=before,
            after_inclusive=after_inclusive,
            before_inclusive=before_inclusive,
            confidence=confidence,
            severity=severity,
            ioc=ioc,
            org_only=org_only,
            user_only=user_only,
            sample=sample,
            restrictions=restrictions,
        )
        first = max(lo, current[0].ts) if current else lo
        own = [name for name, _ in FEEDS[feed].own] if restrictions and current else None
        same_sample = bool((sample or org_only or user_only) and current)
        want = _Wanted(
            confidence=confidence,
            severity=severity,
            ioc=ioc,
            match=restriction_matcher(feed, restrictions),
        )
        made = []
        for _ in range(n):
            ts = first + int(rng.random() * (hi - first + 1))
            like = current[int(rng.random() * len(current))] if current else None
            made.append(
                _fresh(
                    self._spec,
                    feed,
                    rng,
                    ts,
                    want=want,
                    like=like,
                    own=own,
                    same_sample=same_sample,
                )
            )
        return self._store(feed, made)

    def _next_addition(self, feed: str, count: int) -> tuple[random.Random, int]:
        """The RNG of the feed's next addition (numbered in call order) and the count."""
        if feed not in FEEDS:
            raise ValueError(f"unknown feed {feed!r}")
        if feed not in self._spec.feeds:
            raise ValueError(f"feed {feed!r} is not in this dataset's feeds")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an integer >= 0, not {count!r}")
        with self._lock:
            number = self._additions[feed]
            self._additions[feed] = number + 1
        seed = hashlib.blake2b(
            f"{self._spec.seed}|{feed}|added|{number}".encode(), digest_size=16
        )
        return random.Random(int.from_bytes(seed.digest(), "big")), count

    def _store(self, feed: str, made: list[SimRecord]) -> list[dict[str, Any]]:
        """Make ``made`` part of the dataset for good, ahead of everything in its seconds."""
        if not made:
            return []
        made.sort(key=_newest_first)
        by_day: dict[date, list[SimRecord]] = {}
        for rec in made:
            by_day.setdefault(datetime.fromtimestamp(rec.ts, UTC).date(), []).append(rec)
        with self._lock:
            for day, records in by_day.items():
                key = (feed, day)
                self._added[key] = records + self._added.get(key, [])
                stale = self._cache.pop(key, None)
                if stale is not None:
                    self._cached_rows -= len(stale)
            # Bumped last, under the lock: whoever sees the new number sees the records.
            self._versions[feed] += 1
            self._generation += 1
        copies: list[dict[str, Any]] = loads(dumps([r.item for r in made]))
        return copies

    def warm(self, start: date, end: date, feeds: Iterable[str] | None = None) -> int:
        """Generate the days ``start <= day < end`` ahead of use; return their record count."""
        total = 0
        for feed in self._spec.feeds if feeds is None else feeds:
            day = start
            while day < end:
                total += len(self.day(feed, day))
                day += _ONE_DAY
        return total

    def select(
        self,
        feed: str,
        *,
        after: datetime | None,
        before: datetime | None,
        after_inclusive: bool,
        before_inclusive: bool,
        confidence: int = DEFAULT_SCORE,
        severity: int = DEFAULT_SCORE,
        ioc: str | None = None,
        org_only: bool = False,
        user_only: bool = False,
        sample: Sequence[str] = (),
        restrictions: Mapping[str, str] = _NO_RESTRICTIONS,
    ) -> list[SimRecord]:
        """The records a query returns, newest first: exactly what the server pages through.

        A missing ``after`` means one day before ``before``; a missing ``before`` one day
        after ``after``; both missing, the day before ``spec.now``. A bad restriction key
        or value raises :class:`ValueError`.
        """
        lo, hi = _span(after, before, after_inclusive, before_inclusive, self._spec.now)
        match = restriction_matcher(feed, restrictions)
        samples = frozenset(sample)
        out: list[SimRecord] = []
        day = datetime.fromtimestamp(hi, UTC).date()
        while lo <= hi and day >= datetime.fromtimestamp(lo, UTC).date():
            for rec in self.day(feed, day):
                if rec.ts > hi:
                    continue
                if rec.ts < lo:
                    break
                item = rec.item
                try:
                    low = item["confidence"] < confidence or item["severity"] < severity
                except TypeError:  # a mistyped score ("95"): the server still knows its value
                    low = _num(item["confidence"]) < confidence or _num(item["severity"]) < severity
                if low:
                    continue
                if (ioc is not None and item["ioc"] != ioc) or (org_only and not rec.org):
                    continue
                if (user_only and not rec.user) or (samples and item["sample_id"] not in samples):
                    continue
                if match is None or match(item):
                    out.append(rec)
            day -= _ONE_DAY
        return out

    def truth(
        self,
        feed: str,
        start: datetime,
        end: datetime,
        *,
        confidence: int | None = None,
        severity: int | None = None,
        ioc: str | None = None,
        org_only: bool = False,
        user_only: bool = False,
        sample: Sequence[str] = (),
        restrictions: Mapping[str, str] = _NO_RESTRICTIONS,
    ) -> list[dict[str, Any]]:
        """Ground truth: fresh copies of the items with ``start <= timestamp < end``.

        They pass the filters (a score of ``None`` means the API's default, 80) and are,
        newest first, equal to the objects a client decodes from the server's pages.
        """
        records = self.select(
            feed,
            after=start,
            before=end,
            after_inclusive=True,
            before_inclusive=False,
            confidence=DEFAULT_SCORE if confidence is None else confidence,
            severity=DEFAULT_SCORE if severity is None else severity,
            ioc=ioc,
            org_only=org_only,
            user_only=user_only,
            sample=sample,
            restrictions=restrictions,
        )
        copies: list[dict[str, Any]] = loads(dumps([r.item for r in records]))
        return copies


def restriction_matcher(
    feed: str, restrictions: Mapping[str, str]
) -> Callable[[Mapping[str, Any]], bool] | None:
    """A predicate for a feed's result restrictions (all must hold), or None if none.

    ips ``ip`` takes an address or a CIDR; network_streams ``ip`` matches ``src`` or
    ``dst`` and ``port`` either port; artifacts ``sha256``/``md5`` match the artifact's
    hashes and ``sha1`` matches nothing (no SHA-1 is generated); the others match their
    field exactly. Unknown keys and bad values raise :class:`ValueError`.
    """
    if feed not in FEEDS:
        raise ValueError(f"unknown feed {feed!r}")
    tests = []
    for key, value in restrictions.items():
        if key not in FEEDS[feed].restrictions:
            raise ValueError(f"{key!r} is not a restriction of feed {feed!r}")
        tests.append(_restriction(feed, key, value))
    if not tests:
        return None
    return lambda item: all(test(item) for test in tests)


def _restriction(feed: str, key: str, value: str) -> Callable[[Mapping[str, Any]], bool]:
    if key == "ip":
        net = ipaddress.ip_network(value.strip(), strict=False)
        names = ("src", "dst") if feed == "network_streams" else ("ip",)
        return lambda item: any(_in(net, item.get(name)) for name in names)
    if key == "port":
        if not (value.isascii() and value.isdigit() and int(value) <= 65535):
            raise ValueError(f"port {value!r} is not a port number")
        port = int(value)
        return lambda item: port in (item.get("src_port"), item.get("dst_port"))
    if key == "sha1":
        return lambda item: False
    column = {"sha256": "artifact_sha256", "md5": "artifact_md5"}.get(key, key)
    wanted = value.lower() if column.startswith("artifact_") else value
    return lambda item: item.get(column) == wanted


def _in(net: ipaddress.IPv4Network | ipaddress.IPv6Network, text: Any) -> bool:
    try:
        return isinstance(text, str) and ipaddress.ip_address(text) in net
    except ValueError:
        return False


def query_bounds(
    after: datetime | None, before: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """A query's ``after`` and ``before`` with the API's defaults filled in.

    A missing ``after`` means one day before ``before``; a missing ``before`` one day
    after ``after``; both missing, the day before ``now``.
    """
    if after is None:
        after = (now if before is None else before) - _ONE_DAY
    if before is None:
        before = after + _ONE_DAY
    return after, before


def _span(
    after: datetime | None,
    before: datetime | None,
    after_inclusive: bool,
    before_inclusive: bool,
    now: datetime,
) -> tuple[int, int]:
    """The query as a closed range of whole epoch seconds ``[lo, hi]``."""
    after, before = query_bounds(after, before, now)
    if after.tzinfo is None or before.tzinfo is None:
        raise ValueError("after and before must be timezone-aware")
    start, end = after.timestamp(), before.timestamp()
    lo = math.ceil(start) if after_inclusive else math.floor(start) + 1
    hi = math.floor(end) if before_inclusive else math.ceil(end) - 1
    return lo, hi


def _generate(spec: DatasetSpec, feed: str, day: date) -> tuple[SimRecord, ...]:
    # The records hold no cycles, yet the cyclic GC keeps rescanning the growing heap
    # while they are built; pausing it saves some 10-15% of the time.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _build(spec, feed, day)
    finally:
        if paused:
            gc.enable()


def _build(spec: DatasetSpec, feed: str, day: date) -> tuple[SimRecord, ...]:
    seed = hashlib.blake2b(f"{spec.seed}|{feed}|{day.isoformat()}".encode(), digest_size=16)
    rng = random.Random(int.from_bytes(seed.digest(), "big"))
    rnd, bits = rng.random, rng.getrandbits
    empty, scale = rnd() < 0.05, rnd()
    usual = 0 if empty else int(spec.rows_per_day * (0.5 + scale))
    count = spec.dense_days.get(day.isoformat(), usual)
    if count == 0:
        return ()
    base = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    prefix, clock = day.isoformat() + "T", _clock()
    samples = [
        (f"{bits(128):032x}", f"{bits(256):064x}", org, org and rnd() < 0.4)
        for org in (rnd() < 0.3 for _ in range(max(1, count // 4)))
    ]
    # Indicators repeat across samples, as real ones do; a pool is also 3x cheaper.
    pool = [_OWN[feed](rng) for _ in range(max(1, count // 3))]
    nullable, with_sha, iocs, scores = _NULLABLE[feed], feed != "artifacts", _IOCS, _SCORES
    n_pool, n_samples, n_iocs = len(pool), len(samples), len(iocs)
    # The rates in 1/1024ths, to compare with 10 bits of the per-record draw.
    null_odds = round(spec.null_rate * 1024)
    extra_odds = 1024 - round(spec.extra_field_rate * 1024)
    mistyped = spec.mistyped_rate  # drawn separately, so 0 leaves every dataset as it was
    new = tuple.__new__  # skips NamedTuple's slower Python-level __new__
    records: list[SimRecord] = []
    for second in _seconds(rng, count):
        # One 64-bit draw feeds every choice below; a rng call per choice is 3x slower.
        x = bits(64)
        item = pool[(x & 0xFFFFF) % n_pool].copy()
        sample_id, sample_sha, org, user = samples[(x >> 46) % n_samples]
        item["timestamp"] = prefix + clock[second]
        item["ioc"] = iocs[(x >> 30 & 255) % n_iocs]
        item["confidence"] = scores[x >> 38 & 15]
        item["severity"] = scores[x >> 42 & 15]
        item["sample_id"] = sample_id
        if with_sha:
            item["sample_sha256"] = sample_sha
        odds = x >> 20 & 1023
        if odds < null_odds:
            item[nullable[odds % len(nullable)]] = None
        elif odds >= extra_odds:
            name, value = _extra_field(rng)
            item[name] = value
        if mistyped and rng.random() < mistyped:
            _mistype(rng, item)
        records.append(new(SimRecord, (base + second, item, org, user)))
    if spec.item_padding:
        # Afterwards, not in the loop: no cost per record when there is no padding.
        pad = _padding(spec.item_padding)
        for rec in records:
            rec.item["padding"] = pad
    if records and (feed, day.isoformat()) in spec.lone_surrogates:
        records[0].item["ioc"] = LONE_SURROGATE
    return tuple(records)


LONE_SURROGATE = "\ud800"
"""A string JSON can carry (as an escape) and UTF-8 cannot."""


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value``; a lone surrogate is written as its escape sequence.

    orjson refuses strings that are not valid UTF-8, which is right for almost every
    use; the standard library writes them escaped, as a server in another language would.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _newest_first(rec: SimRecord) -> int:
    return -rec.ts


@dataclass(frozen=True, kw_only=True)
class _Wanted:
    """The filters an added record must pass: score levels, ``ioc`` and restrictions."""

    confidence: int = 0
    severity: int = 0
    ioc: str | None = None
    match: Callable[[Mapping[str, Any]], bool] | None = None

    def passes(self, item: Mapping[str, Any]) -> bool:
        """True if ``item`` passes the scores and restrictions (as ``select`` judges)."""
        scores = _num(item["confidence"]) >= self.confidence
        scores = scores and _num(item["severity"]) >= self.severity
        return scores and (self.match is None or self.match(item))


_ANY = _Wanted()


def _fresh(
    spec: DatasetSpec,
    feed: str,
    rng: random.Random,
    ts: int,
    *,
    want: _Wanted = _ANY,
    like: SimRecord | None = None,
    own: Sequence[str] | None = None,
    same_sample: bool = False,
) -> SimRecord:
    """One record at epoch second ``ts``, built as :func:`_build` builds them.

    It passes ``want``. ``own`` names fields copied from ``like`` rather than generated (a
    restricted query's records all match it); ``same_sample`` takes ``like``'s sample too.
    """
    if like is not None and own is not None:
        item = {name: like.item[name] for name in own if name in like.item}
    else:
        item = _OWN[feed](rng)
    if like is not None and same_sample:
        sample_id = like.item["sample_id"]
        sample_sha = like.item.get("sample_sha256") or f"{rng.getrandbits(256):064x}"
        org, user = like.org, like.user
    else:
        sample_id, sample_sha = f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(256):064x}"
        org = rng.random() < 0.3
        user = org and rng.random() < 0.4
    item["timestamp"] = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    item["ioc"] = want.ioc if want.ioc is not None else _pick(rng, _IOCS)
    item["confidence"] = _pick(rng, [s for s in _SCORES if s >= want.confidence])
    item["severity"] = _pick(rng, [s for s in _SCORES if s >= want.severity])
    item["sample_id"] = sample_id
    if feed != "artifacts":
        item["sample_sha256"] = sample_sha
    odds = rng.random()
    if odds < spec.null_rate and own is None:  # a copied field stays as the query matched it
        item[_pick(rng, _NULLABLE[feed])] = None
    elif odds >= 1.0 - spec.extra_field_rate:
        name, value = _extra_field(rng)
        item[name] = value
    if spec.mistyped_rate and rng.random() < spec.mistyped_rate:
        mistyped = dict(item)
        _mistype(rng, mistyped)
        if want.passes(mistyped):  # e.g. confidence=True would fall under the query's level
            item = mistyped
    if spec.item_padding:
        item["padding"] = _padding(spec.item_padding)
    return SimRecord(ts, item, org, user)


@cache
def _padding(size: int) -> str:
    """``size`` ASCII characters, one shared string (items are never mutated)."""
    text = "padding-0123456789-abcdefghijklmnopqrstuvwxyz-"
    return (text * (size // len(text) + 1))[:size]


def _seconds(rng: random.Random, count: int) -> list[int]:
    """Seconds into the day, newest first: the boundary cases, then uniform random ones."""
    crowded = rng.randrange(1, DAY_SECONDS - 1)
    edges = [0, DAY_SECONDS - 1, crowded, crowded, crowded]
    edges += [h * 3600 + m for h in rng.sample(range(1, 23), 3) for m in (0, 900, 2700)]
    rnd = rng.random
    seconds = edges[:count] + [int(rnd() * DAY_SECONDS) for _ in range(count - len(edges))]
    # Items are built in this order, so a record's position is its tie-breaking sequence.
    seconds.sort(reverse=True)
    return seconds


@cache
def _clock() -> tuple[str, ...]:
    """``"HH:MM:SSZ"`` for every second of a day: formatting per record is too slow."""
    return tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(DAY_SECONDS))


# What items look like. Half the scores are below the API's default of 80, so that
# default visibly drops items; 16 of them, so a 4-bit draw picks one without bias.
_SCORES = (0, 20, 25, 40, 50, 60, 70, 75, 80, 85, 90, 90, 95, 95, 100, 100)
_IOCS = (
    "network-snort-malware",
    "js-uses-encrypt-decrypt",
    "registry-autorun-key-modified",
    "document-network-traffic",
    "network-communications-http-get-url",
    "pe-packed-upx",
    "malware-known-trojan-av",
    "process-injection-remote-thread",
    "network-dns-query-dga",
    "file-dropped-executable",
    "powershell-download-cradle",
    "sinkholed-domain",
    "network-fast-flux-domain",
    "registry-persistence-service",
    "modified-hosts-file",
)
_WORDS = ("update", "cdn", "secure", "login", "mail", "static", "api", "files", "panel", "dl")
_HOSTS = ("test-hf", "greatlymissed", "shop-example", "winupdate-check", "paypa1-verify")
_TLDS = (".su", ".co.za", ".com", ".net", ".ru", ".info", ".xyz", ".top", ".io")
_IDN = ("пример-банк.рф", "münchen-zahlung.de", "例え.テスト", "bücher.com", "δοκιμή.gr")
_USERS = ("admin", "Дмитрий", "jsmith", "José", "田中", "Administrator")
_WIN_PATHS = (
    "C:\\Users\\{u}\\AppData\\Local\\Temp\\{n}.exe",
    "C:\\Users\\{u}\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup\\{n}.lnk",
    "C:\\Windows\\System32\\{n}.dll",
    "C:\\ProgramData\\{n}\\{n}.tmp",
    "C:\\Users\\Дмитрий\\AppData\\Local\\{n}\\отчёт.docm",
)
_UNIX_PATHS = (
    "/tmp/{n}.sh",
    "/tmp/日本語/x.sh",
    "/var/tmp/.{n}",
    "index.min.js",
    "/home/{u}/.config/autostart/{n}.desktop",
)
_KEYS = (
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\{n}",
    "HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\RunOnce\\{n}",
    "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\{n}\\ImagePath",
    "HKEY_CURRENT_USER\\Software\\Classes\\mscfile\\shell\\open\\command",
    "HKEY_CURRENT_USER\\Software\\Программы\\{n}\\Путь",
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Wow6432Node\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
)
_PORTS = (80, 443, 53, 8080, 4444, 25, 6667, 8443, 3389)
_TAGS = ("apt", "banker", "ransomware", "loader", "TLP:AMBER")
_FAMILIES = (("Emotet", ("Heodo", "Geodo")), ("AgentTesla", ()), ("QakBot", ("QBot", "Pinkslip")))


def _pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    return seq[int(rng.random() * len(seq))]


def _name(rng: random.Random) -> str:
    return f"{rng.getrandbits(24):06x}"


def _ip(rng: random.Random) -> str:
    x = rng.getrandbits(98)
    if x & 3 == 0:
        # RFC 5952 text, as ipaddress would print it unless two adjacent groups are 0 (~1e-9).
        return "2001:db8:" + ":".join(f"{x >> s & 0xFFFF:x}" for s in range(2, 98, 16))
    x >>= 2
    return f"{x >> 24 & 255}.{x >> 16 & 255}.{x >> 8 & 255}.{x & 255}"


def _domain(rng: random.Random) -> str:
    u = rng.random()
    if u < 0.05:
        return str(_pick(rng, _IDN))
    host = f"{_pick(rng, _HOSTS)}{_pick(rng, _TLDS)}"
    if u < 0.3:
        return f"h{rng.getrandbits(20)}.s{rng.getrandbits(4):02d}.{host}"
    return f"{_pick(rng, _WORDS)}.{host}"


def _url(rng: random.Random) -> str:
    scheme = "https" if rng.random() < 0.5 else "http"
    url = f"{scheme}://{_domain(rng)}/{_pick(rng, _WORDS)}/{_name(rng)}.php"
    u = rng.random()
    if u < 0.02:
        # Longer than the 2,000 characters some tools silently cut URLs at.
        return f"{url}?data={rng.getrandbits(8400):x}&q=привет мир&ref=日本"
    return f"{url}?id={rng.getrandbits(16)}&lang=ru&q=загрузка" if u < 0.5 else url


def _path(rng: random.Random) -> str:
    pattern: str = _pick(rng, _WIN_PATHS if rng.random() < 0.6 else _UNIX_PATHS)
    return pattern.format(u=_pick(rng, _USERS), n=_name(rng))


def _num(value: Any) -> float:
    return float(value)


def _mistype(rng: random.Random, item: dict[str, Any]) -> None:
    """Give one value a type the documentation does not promise, as real APIs do."""
    u = rng.random()
    if u < 0.4:
        item["confidence"] = str(item["confidence"])  # "95"
    elif u < 0.7:
        item["severity"] = float(item["severity"]) + 0.5  # 80.5
    else:
        for name in ("port", "aid", "src_port", "dst_port"):
            if name in item and item[name] is not None:
                item[name] = str(item[name])
                return
        item["confidence"] = True


def _extra_field(rng: random.Random) -> tuple[str, Any]:
    u = rng.random()
    if u < 0.4:
        return "tag", _pick(rng, _TAGS)
    if u < 0.8:
        name, aliases = _pick(rng, _FAMILIES)
        return "family", {"name": name, "aliases": list(aliases), "score": int(rng.random() * 100)}
    return "tags", [_pick(rng, _TAGS), _pick(rng, _TAGS)]


_OWN: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "ips": lambda r: {"ip": _ip(r), "port": _pick(r, _PORTS)},
    "domains": lambda r: {"domain": _domain(r)},
    "urls": lambda r: {"url": _url(r)},
    "paths": lambda r: {"path": _path(r)},
    "artifacts": lambda r: {
        "aid": int(r.random() * 5000) + 1,
        "artifact_md5": f"{r.getrandbits(128):032x}",
        "artifact_sha256": f"{r.getrandbits(256):064x}",
        "path": _path(r),
    },
    "network_streams": lambda r: {
        "src": f"192.168.{r.getrandbits(2)}.{r.getrandbits(7) + 2}",
        "src_port": 49152 + r.getrandbits(14),
        "dst": _ip(r),
        "dst_port": _pick(r, _PORTS),
    },
    "registry_keys": lambda r: {"registry_key": str(_pick(r, _KEYS)).format(n=_name(r))},
}
_NULLABLE: dict[str, tuple[str, ...]] = {
    "ips": ("port",),
    "domains": ("domain",),
    "urls": ("url",),
    "paths": ("path",),
    "artifacts": ("path", "aid"),
    "network_streams": ("src_port", "dst_port"),
    "registry_keys": ("registry_key",),
}
