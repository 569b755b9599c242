"""The simulator's hostile behaviours over real HTTP.

Refused long ranges and deep offsets, records inserted while paging, late records, huge
pages, endless and trickling bodies, and the ``simulate`` command's flags for them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from harvester.schemas import FEEDS
from harvester.sim import Dataset, DatasetSpec, Faults, ServerOptions, Simulator, SimulatorThread

from cli import cli

KEY = "sim-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEC = DatasetSpec(seed=11, rows_per_day=150)
DAY0 = datetime(2024, 3, 3, tzinfo=UTC)  # this day and the next two have records in every feed
DAY1 = DAY0 + timedelta(days=1)
ALL = {"confidence": "0", "severity": "0"}
SECOND = timedelta(seconds=1)


def api(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def window(after: datetime = DAY0, before: datetime = DAY1, /, **extra: str) -> dict[str, str]:
    return {"after": api(after), "before": api(before), **extra}


@dataclass
class Reply:
    """A fully read HTTP response."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return orjson.loads(self.body)


def url(sim: SimulatorThread | Simulator, feed: str) -> str:
    return f"{sim.url}/api/v2/iocs/feeds/{feed}"


def get(sim: SimulatorThread, feed: str, params: Mapping[str, str]) -> Reply:
    async def run() -> Reply:
        async with aiohttp.ClientSession() as session, session.get(
            url(sim, feed), params=params, headers=AUTH
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    return asyncio.run(run())


def page(sim: SimulatorThread, feed: str, params: Mapping[str, str], offset: int) -> list[Any]:
    reply = get(sim, feed, {**params, "offset": str(offset)})
    assert reply.status == 200, reply.body
    items: list[Any] = reply.json()["data"]["items"]
    return items


def walk(sim: SimulatorThread, feed: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """A naive client: every page by offset, until a page shorter than items_per_page."""
    items: list[dict[str, Any]] = []
    while True:
        data = get(sim, feed, {**params, "offset": str(len(items))}).json()["data"]
        items += data["items"]
        if data["current_item_count"] < data["items_per_page"]:
            return items


def serving(dataset: DatasetSpec = SPEC, **options: Any) -> SimulatorThread:
    """A simulator with its own dataset, so what it adds stays out of other tests."""
    return SimulatorThread(ServerOptions(dataset=dataset, **options))


def truth(sim: SimulatorThread, feed: str = "ips", start: datetime = DAY0,
          end: datetime = DAY1) -> list[dict[str, Any]]:
    return sim.dataset.truth(feed, start, end, confidence=0, severity=0)


def stamp(item: Mapping[str, Any]) -> datetime:
    return datetime.strptime(item["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def key(item: Mapping[str, Any]) -> bytes:
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def looks_real(item: Mapping[str, Any], feed: str) -> bool:
    common = {"timestamp", "ioc", "confidence", "severity", "sample_id"}
    if feed != "artifacts":
        common.add("sample_sha256")
    own = {name for name, _ in FEEDS[feed].own}
    return common | own <= set(item) and len(item["sample_id"]) == 32


def wait_until(check: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll ``check`` (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


# --- defaults are off -----------------------------------------------------------------


def test_new_behaviours_are_off_by_default() -> None:
    """Without the new options: any span and offset are served and paging adds nothing."""
    options = ServerOptions(dataset=SPEC)
    assert options.max_span is None and options.max_offset is None
    assert SPEC.item_padding == 0
    faults = Faults()
    assert faults.endless_body_rate == faults.trickle_rate == faults.insert_while_paging == 0
    with serving(max_limit=20) as sim:
        assert get(sim, "ips", window(DAY0, DAY0 + timedelta(days=60))).status == 200
        assert get(sim, "ips", window(offset="1000000")).json()["data"]["items"] == []
        items = walk(sim, "ips", window(**ALL))
        assert items == truth(sim) and sim.dataset.generation == 0
        assert all("padding" not in item for item in items)
        stats = sim.stats
    assert stats.faults == {} and stats.rows_inserted == 0


# --- maximum range and deep offsets ----------------------------------------------------


def test_max_span_refuses_longer_ranges_with_the_error_envelope() -> None:
    """A range longer than max_span is a 400 envelope saying so; max_span itself is served."""
    with serving(max_span=timedelta(days=2)) as sim:
        assert get(sim, "ips", window(DAY0, DAY0 + timedelta(days=2))).status == 200
        reply = get(sim, "ips", window(DAY0, DAY0 + timedelta(days=2) + SECOND))
        stats = sim.stats
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json;charset=utf-8"
    body = reply.json()
    assert set(body) == {"api_version", "id", "error"}
    error = body["error"]
    assert error["code"] == 400 and error["errors"][0]["message"] == error["message"]
    assert error["message"].startswith("The requested time range is too long; ")
    assert "2024-03-03T00:00:00Z" in error["message"] and "at most 2d" in error["message"]
    assert stats.faults == {"max_span": 1} and stats.by_status == {200: 1, 400: 1}


def test_max_span_applies_to_the_default_bounds() -> None:
    """A missing after or before means one day, which a 12-hour max_span refuses."""
    with serving(max_span=timedelta(hours=12)) as sim:
        refused = [get(sim, "ips", params).status
                   for params in ({"before": api(DAY1)}, {"after": api(DAY0)}, {})]
        assert refused == [400, 400, 400]
        assert get(sim, "ips", window(DAY0, DAY0 + timedelta(hours=12))).status == 200
        assert get(sim, "ips", {"after": "yesterday"}).status == 400
        assert sim.stats.faults == {"max_span": 3}


def test_max_offset_refuses_deeper_offsets() -> None:
    """An offset of max_offset is served; one more is a 400 naming the offset and the fix."""
    with serving(max_offset=40, max_limit=20) as sim:
        assert get(sim, "ips", window(**ALL, offset="40")).status == 200
        reply = get(sim, "ips", window(**ALL, offset="41"))
        assert sim.stats.faults == {"max_offset": 1}
    assert reply.status == 400
    message = reply.json()["error"]["message"]
    assert "'offset': 41" in message and "above 40" in message and "after" in message


# --- records inserted while paging -----------------------------------------------------


def test_insert_while_paging_shifts_every_later_offset() -> None:
    """After a full page at offset > 0, records appear at the head and later pages shift."""
    params = window(**ALL, limit="10")
    with serving(faults=Faults(insert_while_paging=3)) as sim:
        before = truth(sim)
        first = page(sim, "ips", params, 0)
        assert first == before[:10] and truth(sim) == before  # offset 0 inserts nothing
        second = page(sim, "ips", params, 10)
        assert second == before[10:20]
        after = truth(sim)
        assert len(after) == len(before) + 3 and after[3:] == before
        added = after[:3]
        assert all(looks_real(item, "ips") for item in added)
        assert all(stamp(before[0]) <= stamp(item) < DAY1 for item in added)
        third = page(sim, "ips", params, 20)
        assert third == after[20:30] == before[17:27]
        assert third[:3] == second[7:]  # a naive client sees three items twice
        # The first page was cached before the insert; it is not served stale.
        assert page(sim, "ips", params, 0) == truth(sim)[:10]
        assert truth(sim)[6:] == before and sim.stats.faults == {"insert": 2}
        assert sim.stats.rows_inserted == 6


def test_insert_limit_bounds_a_naive_walk_and_short_pages_insert_nothing() -> None:
    """A walk ends: insert_limit caps the records; the records a naive walk misses are those."""
    params = window(**ALL, limit="10")
    with serving(faults=Faults(insert_while_paging=4, insert_limit=10)) as sim:
        before = truth(sim)
        walked = walk(sim, "ips", params)
        after = truth(sim)
        stats = sim.stats
    assert stats.rows_inserted == 10 and stats.faults == {"insert": 3}  # 4 + 4 + 2
    assert len(after) == len(before) + 10 and after[10:] == before
    # Inserted at the head, behind the walk: it misses all ten and sees ten items twice.
    assert len(walked) == len(before) + 10
    assert {key(i) for i in walked} == {key(i) for i in before}
    with serving(faults=Faults(insert_while_paging=4)) as sim:
        count = len(truth(sim))
        short = {**window(**ALL), "limit": str(count - 1)}
        assert len(page(sim, "ips", short, count - 1)) == 1
        assert len(truth(sim)) == count and sim.stats.rows_inserted == 0


def common(items: list[dict[str, Any]], name: str) -> str:
    """The value of ``name`` most items share (indicators repeat across samples)."""
    value: str = Counter(item[name] for item in items if item[name]).most_common(1)[0][0]
    return value


FILTERED: list[tuple[str, Callable[[list[dict[str, Any]]], dict[str, str]]]] = [
    ("domains", lambda items: {"confidence": "90", "severity": "85"}),
    ("domains", lambda items: {"ioc": items[0]["ioc"], "org_only": "true", **ALL}),
    ("urls", lambda items: {"user_only": "true", **ALL}),
    ("paths", lambda items: {"sample": common(items, "sample_id"), **ALL}),
    ("domains", lambda items: {"domain": common(items, "domain"), **ALL}),
    ("network_streams", lambda items: {"port": "443", **ALL}),
    ("ips", lambda items: {"ip": "0.0.0.0/1", **ALL}),
    ("artifacts", lambda items: {"md5": common(items, "artifact_md5"), "confidence": "50"}),
]


@pytest.mark.parametrize(("feed", "make"), FILTERED)
def test_inserted_records_pass_the_query_filters(
    feed: str, make: Callable[[list[dict[str, Any]]], dict[str, str]]
) -> None:
    """Inserted records are in the paged query's own result, at its head, whatever it filters.

    Mistyped values are on, and still none falls under the query's score levels.
    """
    spec = DatasetSpec(seed=11, rows_per_day=150, mistyped_rate=0.5)
    with serving(spec, faults=Faults(insert_while_paging=25)) as sim:
        start, end = DAY0, DAY0 + timedelta(days=3)
        params = {**window(start, end), **make(truth(sim, feed, start, end)), "limit": "1"}
        before = walk_free(sim, feed, params)
        assert len(before) >= 2, "the query needs a second page"
        assert len(page(sim, feed, params, 1)) == 1
        after = walk_free(sim, feed, params)
    assert len(after) == len(before) + 25 and after[25:] == before
    assert all(looks_real(item, feed) for item in after[:25])
    assert all(start <= stamp(item) < end for item in after[:25])


def walk_free(sim: SimulatorThread, feed: str, params: Mapping[str, str]) -> list[Any]:
    """The query's whole result in one page from offset 0 (which never inserts)."""
    items: list[Any] = page(sim, feed, {**params, "limit": "1000"}, 0)
    assert len(items) < 1000
    return items


@pytest.mark.parametrize("after_inclusive", [True, False])
@pytest.mark.parametrize("before_inclusive", [True, False])
def test_inserted_records_stay_inside_the_queried_range(
    after_inclusive: bool, before_inclusive: bool
) -> None:
    """Inserted timestamps lie in the range the server serves, from its newest record on."""
    start, end = DAY0 + timedelta(hours=1, seconds=7), DAY0 + timedelta(hours=9, seconds=3)
    params = window(start, end, **ALL, limit="5")
    with serving(after_inclusive=after_inclusive, before_inclusive=before_inclusive,
                 faults=Faults(insert_while_paging=40)) as sim:
        before = walk_free(sim, "urls", params)
        page(sim, "urls", params, 5)
        after = walk_free(sim, "urls", params)
    added = after[:40]
    assert after[40:] == before
    last = end if before_inclusive else end - SECOND
    assert all(stamp(before[0]) <= stamp(item) <= last for item in added)
    assert all(stamp(item) > start for item in added)  # start is not a whole-second edge
    stamps = [item["timestamp"] for item in after]
    assert stamps == sorted(stamps, reverse=True)
    assert len({item["timestamp"] for item in added}) > 1


def test_insertions_are_deterministic_per_seed_and_request_order() -> None:
    """The same seed and requests insert the same records; another seed, other records."""

    def inserted(spec: DatasetSpec) -> list[dict[str, Any]]:
        with serving(spec, faults=Faults(insert_while_paging=5)) as sim:
            before = truth(sim, "paths")
            for offset in (0, 10, 20, 30):
                page(sim, "paths", window(**ALL, limit="10"), offset)
            after = truth(sim, "paths")
        assert after[15:] == before
        return after[:15]

    first = inserted(SPEC)
    assert first == inserted(SPEC)
    assert first != inserted(DatasetSpec(seed=12, rows_per_day=150))


def test_truth_is_consistent_while_the_server_inserts() -> None:
    """Tests may read truth on their thread while the server inserts on its own."""
    faults = Faults(insert_while_paging=2, insert_limit=300)
    with serving(faults=faults, max_limit=5) as sim:
        before = {feed: len(truth(sim, feed)) for feed in ("ips", "urls")}
        done = threading.Event()
        snapshots: list[tuple[str, list[dict[str, Any]]]] = []

        def read() -> None:
            while not done.is_set():
                for feed in before:
                    snapshots.append((feed, truth(sim, feed)))

        async def harvest() -> None:
            async with aiohttp.ClientSession() as session:

                async def one(feed: str, offset: int) -> None:
                    params = {**window(**ALL), "offset": str(offset)}
                    async with session.get(url(sim, feed), params=params, headers=AUTH) as r:
                        assert r.status == 200
                        await r.read()

                # Pages in flight at once; rounds until the insert budget is spent.
                while await asyncio.to_thread(lambda: sim.stats.rows_inserted) < 300:
                    await asyncio.gather(*(one(feed, offset) for feed in before
                                           for offset in range(5, 400, 5)))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            asyncio.run(harvest())
        finally:
            done.set()
            reader.join()
        inserted = sim.stats.rows_inserted
        final = {feed: len(truth(sim, feed)) for feed in before}
    assert inserted == 300 and sum(final.values()) == sum(before.values()) + 300
    assert len(snapshots) > 2
    for feed, items in snapshots:
        stamps = [item["timestamp"] for item in items]
        assert stamps == sorted(stamps, reverse=True)
        assert before[feed] <= len(items) <= final[feed]


# --- late records ----------------------------------------------------------------------


def test_late_records_are_served_at_once_and_are_part_of_truth() -> None:
    """add_records on a harvested day: the server's cached pages give way to the new truth."""
    with serving() as sim:
        day = DAY0.date()
        harvested = walk(sim, "urls", window(**ALL))
        assert harvested == truth(sim, "urls")
        late = sim.add_records("urls", day, 5)
        assert len(late) == 5 and all(looks_real(item, "urls") for item in late)
        assert all(stamp(item).date() == day for item in late)
        now = walk(sim, "urls", window(**ALL))
        assert now == truth(sim, "urls") and len(now) == len(harvested) + 5
        assert [i for i in now if i not in late] == harvested
        assert all(item in now for item in late)
        stamps = [item["timestamp"] for item in now]
        assert stamps == sorted(stamps, reverse=True)
        start, end = DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=2)
        ranged = sim.add_records("urls", (start, end), 3)
        assert all(start <= stamp(item) < end for item in ranged)
        assert all(item in walk(sim, "urls", window(**ALL)) for item in ranged)


def test_late_records_survive_eviction_and_are_deterministic() -> None:
    """Added records are kept apart from the day cache; equal calls add equal records."""
    small, other = Dataset(SPEC, max_cached_rows=1), Dataset(SPEC)
    day = date(2024, 3, 4)
    assert small.add_records("ips", day, 4) == other.add_records("ips", day, 4)
    small.warm(date(2024, 3, 5), date(2024, 3, 9))  # evicts the day
    start, end = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC)
    assert small.truth("ips", start, end, confidence=0, severity=0) == other.truth(
        "ips", start, end, confidence=0, severity=0
    )
    assert len(small.day("ips", day)) == len(Dataset(SPEC).day("ips", day)) + 4
    assert small.add_records("ips", day, 2) != small.add_records("ips", day, 2)
    assert small.version("ips") == 3 and small.version("urls") == 0 and small.generation == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: d.add_records("hashes", DAY0.date(), 1), "unknown feed"),
        (lambda d: d.add_records("urls", DAY0.date(), 1), "not in this dataset"),
        (lambda d: d.add_records("ips", DAY0.date(), -1), "count"),
        (lambda d: d.add_records("ips", DAY0, 1), "span"),
        (lambda d: d.add_records("ips", (DAY0.replace(tzinfo=None), DAY1), 1), "timezone"),
        (lambda d: d.add_records("ips", (DAY1, DAY0), 1), "no whole second"),
    ],
)
def test_add_records_refuses_bad_input(call: Callable[[Dataset], Any], message: str) -> None:
    """Bad feeds, counts and spans are refused with a message naming the problem."""
    dataset = Dataset(DatasetSpec(feeds=("ips",)))
    with pytest.raises(ValueError, match=message):
        call(dataset)
    assert dataset.generation == 0


# --- huge pages ------------------------------------------------------------------------


def test_item_padding_makes_pages_as_big_as_asked() -> None:
    """Every item, added ones too, carries a padding string; a 4,000-item page is 20 MB."""
    spec = DatasetSpec(seed=3, item_padding=5000, dense_days={"2024-03-03": 4000})
    with serving(spec, max_limit=100_000) as sim:
        reply = get(sim, "domains", window(**ALL, limit="100000"))
        late = sim.add_records("domains", DAY0.date(), 2)
        expected = truth(sim, "domains")
    assert reply.status == 200 and len(reply.body) > 4000 * 5000
    items = reply.json()["data"]["items"]
    assert len(items) == 4000 and all(i in expected for i in items)
    assert all(isinstance(i["padding"], str) and len(i["padding"]) == 5000
               for i in [*items, *late])
    with pytest.raises(ValueError, match="item_padding"):
        DatasetSpec(item_padding=-1)


# --- endless and trickling bodies ------------------------------------------------------


def test_endless_body_streams_until_the_client_hangs_up() -> None:
    """A 200, chunked, a valid JSON prefix repeating the page's items; gone once clients go."""
    with serving(faults=Faults(endless_body_rate=1.0)) as sim:
        normal = Dataset(SPEC).truth("ips", DAY0, DAY1, confidence=0, severity=0)[:10]

        async def read_some(session: aiohttp.ClientSession) -> tuple[Any, bytes]:
            params = window(**ALL, limit="10")
            async with session.get(url(sim, "ips"), params=params, headers=AUTH) as response:
                got = b""
                while len(got) < 4 * 2**20:
                    got += await response.content.read(2**16)
                headers = response.headers.copy()
                response.close()  # hang up mid-body
            return headers, got

        async def run() -> list[tuple[Any, bytes]]:
            async with aiohttp.ClientSession() as session:
                return await asyncio.gather(*(read_some(session) for _ in range(3)))

        for headers, body in asyncio.run(run()):
            assert headers["Content-Type"] == "application/json;charset=utf-8"
            assert "Content-Length" not in headers and headers["Transfer-Encoding"] == "chunked"
            assert body.startswith(b'{"api_version":2,"id":')
            # Cut after the last complete item and close the JSON: the items repeat the page.
            data = orjson.loads(body[: body.rindex(b"},{") + 1] + b"]}}")["data"]
            assert data["index"] == 0 and data["items_per_page"] == 10
            assert len(data["items"]) > 100 and data["items"][:20] == normal + normal
        wait_until(lambda: sim.open_streams == 0, "the endless streams ended")
        assert sim.stats.faults == {"endless_body": 3} and sim.stats.rows_served == 0


def test_trickle_times_out_a_client_mid_body() -> None:
    """Status and headers arrive at once; the body is still coming when the timeout fires."""
    faults = Faults(trickle_rate=1.0, trickle_bytes_per_second=2000)
    with serving(faults=faults) as sim:

        async def run() -> tuple[int, int, int]:
            timeout = aiohttp.ClientTimeout(total=1.0)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url(sim, "ips"), params=window(**ALL), headers=AUTH
            ) as response:
                received: list[int] = []

                async def drain() -> None:
                    while chunk := await response.content.read(1024):
                        received.append(len(chunk))

                with pytest.raises(TimeoutError):
                    await drain()
                return response.status, response.content_length or 0, sum(received)

        status, length, got = asyncio.run(run())
        assert status == 200 and 0 < got < length
        wait_until(lambda: sim.open_streams == 0, "the trickle noticed the hang-up")
        assert sim.stats.faults == {"trickle": 1} and sim.stats.rows_served == 0


def test_trickle_delivers_the_valid_page_to_a_patient_client() -> None:
    """A trickled body is the normal page, whole, with its Content-Length."""
    faults = Faults(trickle_rate=1.0, trickle_bytes_per_second=50_000)
    with serving(faults=faults) as sim:
        reply = get(sim, "ips", window(**ALL, limit="5"))
        wait_until(lambda: sim.open_streams == 0, "the trickle handler returned")
        stats = sim.stats
    assert reply.status == 200 and int(reply.headers["Content-Length"]) == len(reply.body)
    data = reply.json()["data"]
    expected = Dataset(SPEC).truth("ips", DAY0, DAY1, confidence=0, severity=0)[:5]
    assert data["items"] == expected and data["items_per_page"] == 5
    assert stats.faults == {"trickle": 1} and stats.rows_served == 5
    assert stats.by_status == {200: 1}


def test_async_simulator_counts_open_streams() -> None:
    """Simulator (the async one) reports open streams and takes late records too."""

    async def run() -> None:
        faults = Faults(trickle_rate=1.0, trickle_bytes_per_second=4000)
        async with Simulator(ServerOptions(dataset=SPEC, faults=faults)) as sim:
            timeout = aiohttp.ClientTimeout(total=0.5)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url(sim, "ips"), params=window(**ALL), headers=AUTH
            ) as response:
                assert sim.open_streams == 1
                with pytest.raises(TimeoutError):
                    await response.read()
            for _ in range(1000):  # a bound against hanging, not a timing assertion
                if not sim.open_streams:
                    break
                await asyncio.sleep(0.02)
            assert sim.open_streams == 0
            assert len(sim.add_records("ips", DAY0.date(), 2)) == 2

    asyncio.run(asyncio.wait_for(run(), 20))


# --- validation and the command line ---------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Faults(endless_body_rate=0.6, trickle_rate=0.5), "sum"),
        (lambda: Faults(trickle_rate=1.5), "within 0..1"),
        (lambda: Faults(trickle_bytes_per_second=0), "trickle_bytes_per_second"),
        (lambda: Faults(insert_while_paging=-1), "insert_while_paging"),
        (lambda: Faults(insert_limit=-1), "insert_limit"),
        (lambda: ServerOptions(max_span=timedelta(0)), "max_span"),
        (lambda: ServerOptions(max_span=3600), "max_span"),  # type: ignore[arg-type]
        (lambda: ServerOptions(max_offset=-1), "max_offset"),
    ],
)
def test_new_options_are_validated(make: Callable[[], Any], message: str) -> None:
    """Impossible values fail at construction, naming the option."""
    with pytest.raises(ValueError, match=message):
        make()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_simulate_command_serves_the_new_options() -> None:
    """The simulate command's --max-span, --max-offset, --item-padding ... take effect."""
    port = _free_port()
    args = ["simulate", "--port", str(port), "--seed", "11", "--rows-per-day", "150",
            "--max-limit", "10", "--max-span", "2d", "--max-offset", "50",
            "--item-padding", "7", "--insert-while-paging", "2", "--insert-limit", "3"]
    process = subprocess.Popen([sys.executable, "-m", "harvester", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/api/v2/iocs/feeds/ips"

        async def statuses() -> list[Any]:
            async with aiohttp.ClientSession() as session:
                out = []
                for params in (window(DAY0, DAY0 + timedelta(days=3)), window(offset="51"),
                               window(**ALL, offset="10"), window(**ALL, offset="20"),
                               window(**ALL, offset="30")):
                    async with session.get(base, params=params, headers=AUTH) as r:
                        out.append((r.status, await r.json()))
                async with session.get(base.split("/api")[0] + "/_sim/stats") as r:
                    out.append(await r.json())
                return out

        def listening() -> bool:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, "harvester simulate listens")
        *replies, stats = asyncio.run(statuses())
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert [status for status, _ in replies] == [400, 400, 200, 200, 200]
    assert "time range is too long" in replies[0][1]["error"]["message"]
    assert all(item["padding"] == "padding" for item in replies[2][1]["data"]["items"])
    assert stats["faults"] == {"max_span": 1, "max_offset": 1, "insert": 2}
    assert stats["rows_inserted"] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--trickle-rate", "2"], "within 0..1"), (["--max-span", "soon"], "--max-span"),
     (["--insert-limit", "-3"], "insert_limit"), (["--item-padding", "-1"], "item_padding")],
)
def test_simulate_command_refuses_bad_values_in_one_line(flags: list[str], message: str) -> None:
    """A bad simulator flag is exit 2 with one line naming it, before anything listens."""
    result = cli(["simulate", "--port", str(_free_port()), *flags], timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harvester: error:") and message in lines[0]
