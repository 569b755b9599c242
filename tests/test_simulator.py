"""The simulator: a deterministic, realistic dataset, a strict API and reachable faults."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.schemas import FEEDS
from harvester.sim import (
    Dataset,
    DatasetSpec,
    Faults,
    ServerOptions,
    Simulator,
    SimulatorThread,
)

KEY = "sim-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEC = DatasetSpec(seed=11, rows_per_day=150)
DAY0 = datetime(2024, 3, 3, tzinfo=UTC)  # this day and the next two have records in every feed
DAY1 = DAY0 + timedelta(days=1)
ALL = {"confidence": "0", "severity": "0"}
_DENIED = "Unauthorized API request."
UNAUTHORIZED = {
    "message": _DENIED,
    "code": 401,
    "errors": [{"code": 401, "message": _DENIED, "help": "/doc/main/index.html"}],
}


def api(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Reply:
    """A fully read HTTP response."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return orjson.loads(self.body)


async def _get(session: aiohttp.ClientSession, url: str, params: Mapping[str, str],
               headers: Mapping[str, str]) -> Reply:
    async with session.get(url, params=params, headers=headers) as response:
        return Reply(response.status, dict(response.headers), await response.read())


def get(sim: SimulatorThread, feed: str = "ips", params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] = AUTH) -> Reply:
    async def run() -> Reply:
        async with aiohttp.ClientSession() as session:
            return await _get(session, f"{sim.url}/api/v2/iocs/feeds/{feed}", params or {}, headers)

    return asyncio.run(run())


def page_all(sim: SimulatorThread, feed: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every item of a query, paging by the applied limit until a short page."""

    async def run() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            while True:
                url = f"{sim.url}/api/v2/iocs/feeds/{feed}"
                reply = await _get(session, url, {**params, "offset": str(len(items))}, AUTH)
                assert reply.status == 200, reply.body
                data = reply.json()["data"]
                assert data["index"] == len(items)
                assert data["current_item_count"] == len(data["items"])
                items += data["items"]
                if data["current_item_count"] < data["items_per_page"]:
                    return items

    return asyncio.run(run())


def window(after: datetime = DAY0, before: datetime = DAY1, /, **extra: str) -> dict[str, str]:
    return {"after": api(after), "before": api(before), **extra}


def select(sim: SimulatorThread, feed: str, after: datetime | None = DAY0, before: datetime = DAY1,
           **filters: Any) -> list[dict[str, Any]]:
    opts = sim.options
    records = sim.dataset.select(feed, after=after, before=before,
                                 after_inclusive=opts.after_inclusive,
                                 before_inclusive=opts.before_inclusive, **filters)
    return [r.item for r in records]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return Dataset(SPEC)


@pytest.fixture(scope="module")
def sim(dataset: Dataset) -> Iterator[SimulatorThread]:
    with SimulatorThread(ServerOptions(dataset=SPEC, max_limit=50), dataset=dataset) as server:
        yield server


@pytest.fixture(scope="module")
def sims(dataset: Dataset) -> Iterator[dict[int, SimulatorThread]]:
    servers = {n: SimulatorThread(ServerOptions(dataset=SPEC, max_limit=n), dataset=dataset)
               for n in (7, 64, 1000)}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


def serving(**options: Any) -> SimulatorThread:
    return SimulatorThread(ServerOptions(dataset=SPEC, **options))


# --- the envelope and the strict API ---------------------------------------------------


def test_success_envelope_has_exactly_the_documented_shape(sim: SimulatorThread) -> None:
    """A page is {api_version, id, data{index, current_item_count, items_per_page, items}}."""
    reply = get(sim, "domains", window(limit="10"))
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json;charset=utf-8"
    body = reply.json()
    assert set(body) == {"api_version", "id", "data"}
    assert body["api_version"] == 2 and isinstance(body["id"], int)
    assert set(body["data"]) == {"index", "current_item_count", "items_per_page", "items"}
    assert body["data"]["index"] == 0 and body["data"]["current_item_count"] == 10
    common = {"timestamp", "ioc", "confidence", "severity", "sample_id", "sample_sha256"}
    assert all(common <= set(item) and "domain" in item for item in body["data"]["items"])


@pytest.mark.parametrize(
    ("headers", "params"),
    [({}, {}), ({"Authorization": "Bearer nope"}, {}), ({}, {"api_key": "nope"}),
     ({"Authorization": KEY}, {}), ({"Authorization": f"Token {KEY}"}, {})],
)
def test_bad_or_missing_key_gets_the_documented_401(
    sim: SimulatorThread, headers: dict[str, str], params: dict[str, str]
) -> None:
    """Anything but the right Bearer header or api_key is a 401 in the exact envelope."""
    reply = get(sim, "ips", {**window(), **params}, headers)
    assert reply.status == 401
    assert reply.headers["Content-Type"] == "application/json;charset=utf-8"
    body = reply.json()
    assert set(body) == {"api_version", "id", "error"} and isinstance(body["id"], int)
    assert body["api_version"] == 2 and body["error"] == UNAUTHORIZED


def test_both_key_forms_are_accepted(sim: SimulatorThread) -> None:
    """The Authorization: Bearer header and the api_key parameter both authenticate."""
    assert get(sim, "ips", window(), AUTH).status == 200
    assert get(sim, "ips", window(api_key=KEY), {}).status == 200


@pytest.mark.parametrize(
    "bad", ["2024-01-01", "2024-01-01T00:00:00", "2024-01-01T00:00:00+00:00",
            "2024-01-01T00:00:00.000Z", "2024-13-01T00:00:00Z", "2024-01-01 00:00:00Z"],
)
@pytest.mark.parametrize("name", ["after", "before"])
def test_dates_not_in_the_exact_format_are_400(sim: SimulatorThread, name: str, bad: str) -> None:
    """after/before must be exactly YYYY-MM-DDTHH:MM:SSZ; anything else is a 400 envelope."""
    reply = get(sim, "ips", {**window(), name: bad})
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == 400 and "invalid date format" in error["message"].lower()


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "-1"}, {"limit": "ten"}, {"offset": "-1"}, {"offset": "1.5"},
     {"confidence": "101"}, {"severity": "high"}, {"org_only": "yes"}, {"user_only": "1"},
     {"sample_id": "abc"}, {"org-only": "true"}, {"domain": "x.com"}, {"ip": "not-an-ip"},
     {"page": "2"}],
)
def test_invalid_or_unknown_parameters_are_400(
    sim: SimulatorThread, params: dict[str, str]
) -> None:
    """Bad values and unknown parameters (including other feeds' restrictions) are 400s."""
    reply = get(sim, "ips", {**window(), **params})
    assert reply.status == 400 and reply.json()["error"]["code"] == 400


def test_repeated_parameter_is_400(sim: SimulatorThread) -> None:
    """A parameter given twice is rejected rather than silently picking one."""

    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            url = f"{sim.url}/api/v2/iocs/feeds/ips"
            async with session.get(url, params=[("limit", "5"), ("limit", "6")], headers=AUTH) as r:
                return r.status

    assert asyncio.run(run()) == 400


def test_unknown_feed_is_404(sim: SimulatorThread) -> None:
    """A feed name outside the seven is a 404 error envelope."""
    reply = get(sim, "hashes", window())
    assert reply.status == 404 and reply.json()["error"]["code"] == 404


def test_limit_is_clamped_and_reported_in_items_per_page(sims: dict[int, SimulatorThread]) -> None:
    """items_per_page is the applied limit: clamped to max_limit, else the default."""
    small = sims[7]
    assert get(small, "ips", window(**ALL, limit="500")).json()["data"]["items_per_page"] == 7
    assert get(small, "ips", window(**ALL, limit="3")).json()["data"]["items_per_page"] == 3
    assert get(small, "ips", window(**ALL)).json()["data"]["items_per_page"] == 7
    big = get(sims[1000], "ips", window(**ALL, limit="100000")).json()["data"]
    assert big["items_per_page"] == 1000 and big["current_item_count"] <= 1000


# --- paging and filters ---------------------------------------------------------------


def test_items_come_newest_first(sim: SimulatorThread) -> None:
    """Across all pages of a multi-day query, timestamps never increase."""
    items = page_all(sim, "urls", window(DAY0, DAY0 + timedelta(days=3), **ALL))
    stamps = [item["timestamp"] for item in items]
    assert len(stamps) > 100 and stamps == sorted(stamps, reverse=True)


@settings(max_examples=50, deadline=None)
@given(
    max_limit=st.sampled_from([7, 64, 1000]),
    limit=st.integers(1, 1500),
    feed=st.sampled_from(sorted(FEEDS)),
    start=st.integers(0, 3 * 86400),
    span=st.integers(1, 2 * 86400),
    score=st.sampled_from([0, 50, 80, 95]),
)
def test_pages_reassemble_to_select(
    sims: dict[int, SimulatorThread], max_limit: int, limit: int, feed: str, start: int,
    span: int, score: int,
) -> None:
    """Paging through every offset returns exactly Dataset.select, for any limit/max_limit."""
    sim = sims[max_limit]
    after = DAY0 + timedelta(seconds=start)
    before = after + timedelta(seconds=span)
    params = window(after, before, limit=str(limit), confidence=str(score), severity="0")
    expected = select(sim, feed, after, before, confidence=score, severity=0)
    assert page_all(sim, feed, params) == expected


@pytest.mark.parametrize("after_inclusive", [True, False])
@pytest.mark.parametrize("before_inclusive", [True, False])
def test_bound_inclusivity_options(after_inclusive: bool, before_inclusive: bool) -> None:
    """Records exactly at after/before are served only when that bound is inclusive."""
    with serving(after_inclusive=after_inclusive, before_inclusive=before_inclusive) as sim:
        items = page_all(sim, "paths", window(**ALL))
        assert items == select(sim, "paths", confidence=0, severity=0)
    stamps = {item["timestamp"] for item in items}
    assert (api(DAY0) in stamps) is after_inclusive
    assert (api(DAY1) in stamps) is before_inclusive
    assert api(DAY1 - timedelta(seconds=1)) in stamps


def test_default_scores_filter_below_80_and_zero_returns_all(sim: SimulatorThread) -> None:
    """Without confidence/severity only items scoring >= 80 on both come; 0 returns the rest."""
    filtered = page_all(sim, "ips", window())
    everything = page_all(sim, "ips", window(**ALL))
    assert filtered and all(i["confidence"] >= 80 and i["severity"] >= 80 for i in filtered)
    assert len(everything) > 2 * len(filtered)
    assert any(i["confidence"] < 80 for i in everything)
    assert filtered == [i for i in everything if i["confidence"] >= 80 and i["severity"] >= 80]


def test_ioc_sample_and_org_filters(sim: SimulatorThread) -> None:
    """ioc, sample, org_only and user_only narrow the result exactly as select() does."""
    everything = page_all(sim, "domains", window(**ALL))
    ioc = everything[0]["ioc"]
    samples = sorted({everything[0]["sample_id"], everything[-1]["sample_id"]})
    cases: list[tuple[dict[str, str], dict[str, Any]]] = [
        ({"ioc": ioc}, {"ioc": ioc}),
        ({"sample": ",".join(samples)}, {"sample": samples}),
        ({"org_only": "true"}, {"org_only": True}),
        ({"user_only": "true"}, {"user_only": True}),
        ({"org_only": "false"}, {}),
    ]
    for params, filters in cases:
        items = page_all(sim, "domains", window(**ALL, **params))
        assert items == select(sim, "domains", confidence=0, severity=0, **filters), params
        assert 0 < len(items) <= len(everything)
    assert len(page_all(sim, "domains", window(**ALL, org_only="true"))) < len(everything)


def test_result_restrictions(sim: SimulatorThread) -> None:
    """Per-feed restrictions: IP or CIDR, stream ip/port on either side, artifact hashes."""
    ips = page_all(sim, "ips", window(**ALL))
    v4 = next(i["ip"] for i in ips if ipaddress.ip_address(i["ip"]).version == 4)
    net = str(ipaddress.ip_network(f"{v4}/16", strict=False))
    assert {i["ip"] for i in page_all(sim, "ips", window(**ALL, ip=v4))} == {v4}
    in_net = page_all(sim, "ips", window(**ALL, ip=net))
    assert v4 in {i["ip"] for i in in_net}
    assert all(ipaddress.ip_address(i["ip"]) in ipaddress.ip_network(net) for i in in_net)
    streams = page_all(sim, "network_streams", window(**ALL, port="443"))
    assert streams and all(443 in (s["src_port"], s["dst_port"]) for s in streams)
    dst = streams[0]["dst"]
    assert all(dst in (s["src"], s["dst"])
               for s in page_all(sim, "network_streams", window(**ALL, ip=dst)))
    art = page_all(sim, "artifacts", window(**ALL))[3]
    for key, field_name in (("sha256", "artifact_sha256"), ("md5", "artifact_md5")):
        found = page_all(sim, "artifacts", window(**ALL, **{key: art[field_name]}))
        assert art in found and {a[field_name] for a in found} == {art[field_name]}
    assert page_all(sim, "artifacts", window(**ALL, sha1="0" * 40)) == []


def test_missing_bounds_default_to_one_day(sim: SimulatorThread) -> None:
    """A missing after means before - 1 day; a missing before means after + 1 day."""
    expected = select(sim, "urls", None, DAY1, confidence=0, severity=0)
    assert page_all(sim, "urls", {"before": api(DAY1), **ALL}) == expected
    one_day = page_all(sim, "urls", window(**ALL))
    assert page_all(sim, "urls", {"after": api(DAY0), **ALL}) == one_day


def test_truth_equals_what_a_half_open_server_serves(sim: SimulatorThread) -> None:
    """Dataset.truth(start, end) is exactly the decoded items of [start, end) from the server."""
    truth = sim.dataset.truth("registry_keys", DAY0, DAY1, confidence=0, severity=0)
    assert truth == page_all(sim, "registry_keys", window(**ALL))
    default = sim.dataset.truth("registry_keys", DAY0, DAY1)
    assert default == page_all(sim, "registry_keys", window())


# --- the dataset ----------------------------------------------------------------------


_DIGEST = """
import hashlib, orjson
from datetime import date
from harvester.schemas import FEEDS
from harvester.sim import Dataset, DatasetSpec
data = Dataset(DatasetSpec(seed=SEED))
items = [r.item for f in FEEDS for d in range(1, 4) for r in data.day(f, date(2024, 3, d))]
digest = hashlib.sha256(orjson.dumps(items)).hexdigest()
"""


def _digest(seed: int, hash_seed: str | None = None) -> str:
    code = _DIGEST.replace("SEED", str(seed))
    if hash_seed is None:
        scope: dict[str, Any] = {}
        exec(code, scope)
        return str(scope["digest"])
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code + "print(digest)"], env=env, check=True,
                         capture_output=True, text=True, cwd=root)
    return run.stdout.strip()


def test_dataset_is_deterministic_per_seed_and_hash_seed_free() -> None:
    """Equal seeds give identical records, even under another PYTHONHASHSEED; seeds differ."""
    assert _digest(3) == _digest(3) == _digest(3, hash_seed="12345")
    assert _digest(3) != _digest(4)


def test_day_does_not_depend_on_generation_order() -> None:
    """A day's records are the same whether generated first, last or after eviction."""
    one, two = Dataset(SPEC, max_cached_rows=1), Dataset(SPEC)
    later = date(2024, 3, 5)
    first = list(one.day("ips", later))
    two.warm(date(2024, 3, 1), date(2024, 3, 8))
    assert first == list(two.day("ips", later)) == list(one.day("ips", later))


def test_every_day_with_records_has_boundary_records(dataset: Dataset) -> None:
    """Each non-empty day has records at 00:00:00, 23:59:59, HH:00/15/45 and a shared second."""
    seen_days = 0
    for feed in FEEDS:
        for n in range(10):
            records = dataset.day(feed, date(2024, 3, 1) + timedelta(days=n))
            if not records:
                continue
            seen_days += 1
            times = [r.item["timestamp"][11:] for r in records]
            assert "00:00:00Z" in times and "23:59:59Z" in times
            assert sum(t.endswith(":00:00Z") for t in times) >= 4
            assert any(t.endswith(":15:00Z") for t in times)
            assert any(t.endswith(":45:00Z") for t in times)
            assert max(Counter(r.ts for r in records).values()) >= 3
            assert all(a.ts >= b.ts for a, b in itertools.pairwise(records))
            assert all(datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                       == r.item["timestamp"] for r in records)
    assert seen_days > 50


def test_counts_vary_by_day_and_dense_days_override() -> None:
    """Day sizes vary around rows_per_day, some days are empty, dense_days sets a count."""
    data = Dataset(DatasetSpec(seed=5, rows_per_day=100, dense_days={"2024-06-02": 2500}))
    counts = [len(data.day("ips", date(2024, 1, 1) + timedelta(days=n))) for n in range(120)]
    assert 0 in counts and len(set(counts)) > 30
    assert all(c == 0 or 50 <= c <= 150 for c in counts)
    assert len(data.day("ips", date(2024, 6, 2))) == 2500


def test_items_look_like_real_ones(dataset: Dataset) -> None:
    """Items carry IPv6, IDN, >2000-char URLs, Unicode paths/keys, nulls and extra fields."""
    items: dict[str, list[dict[str, Any]]] = {
        feed: [r.item for n in range(20)
               for r in dataset.day(feed, date(2024, 3, 1) + timedelta(days=n))]
        for feed in FEEDS
    }
    assert any(":" in i["ip"] for i in items["ips"]) and any("." in i["ip"] for i in items["ips"])
    assert any(i["port"] is None for i in items["ips"])
    assert any(i["domain"] and not i["domain"].isascii() for i in items["domains"])
    assert any(i["url"] and len(i["url"]) > 2000 for i in items["urls"])
    assert any(i["path"] and "Дмитрий" in i["path"] for i in items["paths"])
    assert any(i["path"] and i["path"].startswith("/") for i in items["paths"])
    keys = [i["registry_key"] for i in items["registry_keys"]]
    assert any(key and not key.isascii() for key in keys)
    assert all("sample_sha256" not in i and isinstance(i["aid"], int | None)
               for i in items["artifacts"])
    known = {name for feed in FEEDS.values() for name, _ in feed.fields}
    extras = [i for feed_items in items.values() for i in feed_items if set(i) - known]
    assert any(isinstance(i.get("family"), dict) for i in extras)
    for feed, own in ((f, FEEDS[f].own) for f in FEEDS):
        assert all(set(dict(own)) <= set(i) for i in items[feed])
    every = [i for feed_items in items.values() for i in feed_items]
    assert all(len(i["sample_id"]) == 32 and 0 <= i["confidence"] <= 100 for i in every)


def test_options_are_validated() -> None:
    """Impossible specs and fault mixes fail at construction, not mid-run."""
    with pytest.raises(ValueError, match="unknown feeds"):
        DatasetSpec(feeds=("hashes",))
    with pytest.raises(ValueError, match="sum"):
        Faults(error_rate=0.7, drop_rate=0.5)
    with pytest.raises(ValueError, match="rate_limit"):
        Faults(rate_limit=0)
    with pytest.raises(ValueError, match="differs"):
        Simulator(ServerOptions(), dataset=Dataset(SPEC))


# --- faults -----------------------------------------------------------------------------


def test_rate_limit_answers_429_with_integer_retry_after() -> None:
    """Above rate_limit the server answers 429, a JSON envelope and Retry-After in seconds."""
    with serving(faults=Faults(rate_limit=2)) as sim:
        replies = [get(sim, "ips", window()) for _ in range(8)]
        limited = [r for r in replies if r.status == 429]
        assert limited and replies[0].status == 200
        assert all(r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
                   for r in limited)
        assert all(r.json()["error"]["code"] == 429 for r in limited)
        assert sim.stats.rate_limited == len(limited)


def test_server_errors_are_5xx_json_or_html() -> None:
    """error_rate=1 yields 500/502/503: JSON envelopes, and 502 as an HTML gateway page."""
    with serving(faults=Faults(error_rate=1.0, seed=3)) as sim:
        replies = [get(sim, "ips", window()) for _ in range(15)]
        stats = sim.stats
    assert {r.status for r in replies} == {500, 502, 503}
    for reply in replies:
        if reply.status == 502:
            assert reply.headers["Content-Type"].startswith("text/html")
        else:
            assert reply.json()["error"]["code"] == reply.status
    assert stats.faults == {"error": 15} and sum(stats.by_status.values()) == 15


def test_dropped_connection_raises_a_client_error() -> None:
    """drop_rate=1 closes the connection without any response."""
    with serving(faults=Faults(drop_rate=1.0)) as sim, pytest.raises(aiohttp.ClientError):
        get(sim, "ips", window())


def test_truncated_bodies_never_decode() -> None:
    """truncate_rate=1 cuts every body: short of Content-Length, or complete but broken JSON."""
    outcomes = set()
    with serving(faults=Faults(truncate_rate=1.0, seed=2)) as sim:
        for _ in range(10):
            try:
                reply = get(sim, "ips", window())
            except aiohttp.ClientPayloadError:
                outcomes.add("short")
                continue
            assert reply.status == 200
            with pytest.raises(orjson.JSONDecodeError):
                reply.json()
            outcomes.add("broken json")
    assert outcomes == {"short", "broken json"}


def test_html_200_missing_items_and_slow_pages() -> None:
    """html_rate: a 200 HTML page; missing_items: no data.items; slow_rate: a late page."""
    with serving(faults=Faults(html_rate=1.0)) as sim:
        reply = get(sim, "ips", window())
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
        with pytest.raises(orjson.JSONDecodeError):
            reply.json()
    with serving(faults=Faults(missing_items_rate=1.0)) as sim:
        data = get(sim, "ips", window()).json()["data"]
        assert "items" not in data and data["index"] == 0
    with serving(faults=Faults(slow_rate=1.0, slow_seconds=0.3)) as sim:
        began = time.monotonic()
        assert get(sim, "ips", window()).status == 200
        assert time.monotonic() - began >= 0.3
        assert sim.stats.faults == {"slow": 1}


def test_repeat_pages_serves_offset_zero_but_echoes_the_index() -> None:
    """With repeat_pages the server ignores offset yet reports the index it was asked for."""
    with serving(faults=Faults(repeat_pages=True)) as sim:
        first = get(sim, "ips", window(**ALL, limit="5")).json()["data"]
        second = get(sim, "ips", window(**ALL, limit="5", offset="5")).json()["data"]
    assert second["index"] == 5 and second["items"] == first["items"]


def test_fault_scope_and_fail_always() -> None:
    """faulty_feeds limits faults to those feeds; fail_always feeds always answer 503."""
    faults = Faults(error_rate=1.0, faulty_feeds=("ips",), fail_always=("urls",))
    with serving(faults=faults) as sim:
        assert get(sim, "ips", window()).status >= 500
        assert get(sim, "domains", window()).status == 200
        assert [get(sim, "urls", window()).status for _ in range(3)] == [503] * 3
        assert get(sim, "urls", {"after": "bad"}).status == 400
        assert sim.stats.faults == {"error": 1, "fail_always": 3}


def test_stats_endpoint_and_reset() -> None:
    """/_sim/stats reports requests by status and feed without auth; reset zeroes them."""
    with serving() as sim:
        get(sim, "ips", window())
        get(sim, "ips", window(), {})
        get(sim, "domains", window(limit="3"))

        async def stats(method: str, path: str) -> Any:
            url = sim.url + path
            async with aiohttp.ClientSession() as session, session.request(method, url) as r:
                return await r.json()

        body = asyncio.run(stats("GET", "/_sim/stats"))
        assert body["requests"] == 3 and body["by_status"] == {"200": 2, "401": 1}
        assert body["by_feed"] == {"ips": 2, "domains": 1} and body["rows_served"] >= 3
        assert asyncio.run(stats("POST", "/_sim/reset-stats")) == {"ok": True}
        assert sim.stats.requests == 0


def test_thread_start_failure_and_stop_leave_nothing_behind(sim: SimulatorThread) -> None:
    """A busy port makes start() raise; stop() is idempotent and joins the server thread."""
    before = threading.active_count()
    port = int(sim.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        SimulatorThread(ServerOptions(dataset=SPEC), port=port).start()
    server = serving()
    server.start()
    assert threading.active_count() == before + 1
    server.stop()
    server.stop()
    assert threading.active_count() == before


def test_async_simulator_serves_and_closes() -> None:
    """Simulator is an async context manager whose port is closed after exit."""

    async def run() -> str:
        async with Simulator(ServerOptions(dataset=SPEC)) as sim, aiohttp.ClientSession() as s:
            url = f"{sim.url}/api/v2/iocs/feeds/ips"
            async with s.get(url, params=window(), headers=AUTH) as response:
                assert response.status == 200
        return url

    url = asyncio.run(run())

    async def after() -> None:
        async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH):
            pass

    with pytest.raises(aiohttp.ClientConnectionError):
        asyncio.run(after())
