"""The live progress display: the figures it shows, that it stays quiet when off, and logs."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from harvester import api, logs
from harvester.counters import Counters
from harvester.progress import (
    LinesAbove,
    Meter,
    format_eta,
    live_progress,
    pages_fetched,
    progress_row,
    progress_view,
    total_row,
    windows_cell,
)
from harvester.report import FeedSummary, RunResult
from harvester.sim.server import SimulatorThread

from harvesting import SIM_KEY

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A fake terminal: says it is a TTY and keeps each write separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def isatty(self) -> bool:
        """Claim to be a terminal."""
        return True

    def write(self, text: str) -> int:
        """Keep the write, then write it."""
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def tty_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment in which rich treats a TTY as a capable terminal."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    """Put structlog back as it was: logs.configure changes it for the whole process."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def feeds() -> dict[str, FeedSummary]:
    return {
        "ips": FeedSummary(
            windows=20,
            skipped=3,
            done=7,
            failed=1,
            pages=40,
            rows=1234,
            counters=Counters(retries=5),
        ),
        "network_streams": FeedSummary(windows=2000, done=1200, pages=400, rows=12_345_678),
    }


def plain(text: str) -> str:
    return ANSI.sub("", text)


def frames(terminal: Terminal) -> int:
    """How many times the display was drawn (each frame is one write with the table)."""
    return len([w for w in terminal.writes if "feed" in w and "windows" in w])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_format_eta() -> None:
    """Durations print as H:MM:SS, nothing left as done, unknown as ?."""
    assert format_eta(3723.4) == "1:02:03"
    assert format_eta(59) == "0:00:59"
    assert format_eta(0.0) == "done"
    assert format_eta(None) == "?"


def test_rows_count_windows_and_extrapolate_the_eta() -> None:
    """Done+skipped of total, and an ETA from this run's pace (skipped windows cost nothing)."""
    row = progress_row("ips", feeds()["ips"], pages_per_second=2.5, elapsed=80.0)
    assert (row.finished, row.total, row.skipped, row.failed) == (10, 20, 3, 1)
    assert windows_cell(row) == "7+3/20"
    assert row.eta == pytest.approx(80.0 * 9 / 8)  # 8 processed in 80 s, 20 - 3 - 8 = 9 left
    fresh = progress_row("urls", FeedSummary(windows=5), pages_per_second=0.0, elapsed=3.0)
    assert fresh.eta is None and windows_cell(fresh) == "0/5"
    finished = progress_row("urls", FeedSummary(windows=5, done=5), pages_per_second=0, elapsed=9)
    assert finished.eta == 0.0
    everything = total_row(
        [row, progress_row("x", FeedSummary(windows=4, done=2), pages_per_second=1, elapsed=80)],
        elapsed=80.0,
    )
    assert (everything.finished, everything.total, everything.pages_per_second) == (12, 24, 3.5)
    assert everything.eta == pytest.approx(80.0 * 11 / 10)


def test_meter_rates_use_the_last_seconds_only() -> None:
    """pages/s is measured over about the last RATE_SPAN seconds, not since the start."""
    now = [100.0]
    meter = Meter(clock=lambda: now[0], span=10.0)
    for at, pages in ((100.0, 0), (105.0, 50), (120.0, 100)):
        now[0] = at
        rows, elapsed = meter.rows({"ips": FeedSummary(windows=1, pages=pages)})
    assert elapsed == 20.0
    assert rows[0].pages_per_second == pytest.approx((100 - 50) / 15)


def test_pages_are_counted_live_from_requests_before_a_window_completes() -> None:
    """Mid-window, requests that were not retries count as fetched pages; after, pages do."""
    assert pages_fetched(FeedSummary(pages=0, counters=Counters(requests=12, retries=2))) == 10
    assert pages_fetched(FeedSummary(pages=30, counters=Counters(requests=12, retries=2))) == 30


def test_view_shows_every_feed_its_counts_and_a_total() -> None:
    """The rendered table (80 columns) names each feed with its windows, rows, retries, ETA."""
    rows, _ = Meter().rows(feeds())
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    console.print(progress_view(rows, elapsed=65.0))
    text = plain(console.file.getvalue())  # type: ignore[attr-defined]
    lines = text.splitlines()
    ips = next(line for line in lines if line.startswith("ips"))
    assert ips.split() == ["ips", "7+3/20", "1", "1,234", "0.0", "5", ips.split()[-1]]
    assert any(
        line.split()[:4] == ["network_streams", "1,200/2,000", "0", "12,345,678"] for line in lines
    )
    assert any(line.split()[:4] == ["all", "1,207+3/2,020", "1", "12,346,912"] for line in lines)
    assert "1,210/2,020 windows  0:01:05 elapsed" in text
    assert all(len(line) <= 80 for line in lines) and "…" not in text


def test_disabled_writes_nothing_and_never_polls() -> None:
    """enabled=False draws nothing, never calls snapshot and leaves sys.stderr alone."""
    stream = Terminal()
    calls = []
    stderr = sys.stderr
    with live_progress(lambda: calls.append(1) or feeds(), enabled=False, stream=stream):
        assert sys.stderr is stderr
        time.sleep(0.3)
    assert stream.getvalue() == "" and calls == []


def test_on_a_file_only_the_final_figures_are_written() -> None:
    """On a non-terminal stream the display prints once, at the end, with the last snapshot."""
    stream = io.StringIO()
    state = feeds()
    with live_progress(lambda: state, enabled=True, stream=stream):
        state["ips"] = FeedSummary(windows=20, done=20, pages=90, rows=4321)
    text = plain(stream.getvalue())
    assert "ips" in text and "20/20" in text and "4,321" in text and "network_streams" in text
    assert text.count("network_streams") == 1


def test_on_a_terminal_it_redraws_from_its_own_thread_a_few_times_a_second(tty_env: None) -> None:
    """On a TTY the display polls snapshot about 4x/s from another thread and shows new figures."""
    stream = Terminal()
    callers: set[str] = set()
    rows = [0]

    def snapshot() -> Mapping[str, FeedSummary]:
        callers.add(threading.current_thread().name)
        return {
            "domains": FeedSummary(windows=10, done=rows[0] // 100, pages=rows[0], rows=rows[0])
        }

    started = time.monotonic()
    with live_progress(snapshot, enabled=True, stream=stream):
        for _ in range(10):
            rows[0] += 100
            time.sleep(0.1)
        wait_for(lambda: frames(stream) >= 2)
    seconds = time.monotonic() - started
    assert 2 <= frames(stream) <= 4 * seconds + 2  # REFRESH_PER_SECOND, plus the final frame
    assert threading.main_thread().name in callers and len(callers) == 2  # refresh thread + stop
    assert "1,000" in plain(stream.getvalue()) and "10/10" in plain(stream.getvalue())


def test_log_lines_print_above_the_display_not_through_it(
    monkeypatch: pytest.MonkeyPatch, structlog_restored: None, tty_env: None
) -> None:
    """Logs configured before the display are printed above it, whole, and it is redrawn below."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    logs.configure(level="info", json=False)  # default stream: whatever sys.stderr is now
    log = structlog.get_logger("harvester")
    with live_progress(feeds, enabled=True, stream=screen):
        assert isinstance(sys.stderr, LinesAbove)
        wait_for(lambda: frames(screen) >= 1)  # a frame for the log line to go above
        log.info("window.done", feed="ips", rows=17, window="x" * 120)  # wider than 80 columns
        time.sleep(0.3)
    assert sys.stderr is screen
    # The log line and a redraw of the display arrive in one write: rich moved the
    # cursor over the old display, printed the line, then drew the display below it.
    [write] = [w for w in screen.writes if "window.done" in w]
    line = next(x for x in plain(write).splitlines() if "window.done" in x)
    assert "feed=ips rows=17 window=" + "x" * 120 in line  # whole: not re-wrapped at 80
    assert "network_streams" not in line
    assert write.index("window.done") < write.index("network_streams")
    assert "\x1b[1A" in write[: write.index("window.done")]  # cursor up: over the old frame


def test_live_progress_follows_a_real_harvest(
    sim: SimulatorThread, tmp_path: Path, tty_env: None
) -> None:
    """Polling Harvest.snapshot from rich's thread during a real run ends on the run's totals."""
    config = api.make_config(
        after="2024-01-01",
        before="2024-01-04",
        out=str(tmp_path),
        base_url=sim.url,
        feeds="ips,urls",
        rate=1000,
        env={},
    )
    runner = api.prepare(config, api_key=SIM_KEY)

    async def go() -> RunResult:
        try:
            return await runner.execute()
        finally:
            await runner.store.close()

    stream = Terminal()
    with live_progress(runner.snapshot, enabled=True, stream=stream):
        result = asyncio.run(go())
    assert result.ok
    text = plain(stream.getvalue())
    final = text[text.rindex("elapsed") - 40 :]  # the last frame drawn
    total = sum(s.rows for s in result.feeds.values())
    assert "6/6 windows" in final and f"{total:,}" in final and "ETA done" in final
