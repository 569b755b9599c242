"""A live progress display for ``harvester run`` on a terminal, drawn with rich.

An overall bar, then one row per feed: windows done (+ skipped, already in the lake)
of the total, failed windows, rows, pages per second over the last few seconds,
retries and an ETA, and a total row. rich's own refresh thread polls the ``snapshot``
function a few times a second; the harvest never waits for the display.

Logs and the display share the terminal without garbling each other: while the
display is up, ``sys.stderr`` is a :class:`LinesAbove` that prints each complete line
through the display's console, *above* the display, which rich then redraws below it.
:func:`harvester.logs.configure` writes to whatever ``sys.stderr`` is at each write
(not the object it was when logging was configured), so every log line takes that
path. Lines are printed unwrapped (the terminal wraps them), so a copied log line has
no added line breaks. ``stdout`` is left alone: it may be a pipe while stderr is a
terminal.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO, cast

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from harvester.report import FeedSummary

REFRESH_PER_SECOND = 4
RATE_SPAN = 10.0
"""Seconds of history behind the pages-per-second figure."""
BAR_WIDTH = 20

Snapshot = Callable[[], Mapping[str, FeedSummary]]


@dataclass(frozen=True, kw_only=True)
class Row:
    """What the display shows for one feed (or for all of them)."""

    feed: str
    total: int
    finished: int
    skipped: int
    failed: int
    rows: int
    pages_per_second: float
    retries: int
    throttled: int
    eta: float | None
    """Seconds left; ``0.0`` when nothing is left, ``None`` while it cannot be told."""


def progress_row(
    feed: str, summary: FeedSummary, *, pages_per_second: float, elapsed: float
) -> Row:
    """One feed's row; the ETA extrapolates this run's pace over ``elapsed`` seconds."""
    processed = summary.done + summary.failed
    remaining = max(summary.windows - summary.skipped - processed, 0)
    return Row(
        feed=feed,
        total=summary.windows,
        finished=summary.done + summary.skipped,
        skipped=summary.skipped,
        failed=summary.failed,
        rows=summary.rows,
        pages_per_second=pages_per_second,
        retries=summary.counters.retries,
        throttled=summary.counters.throttled,
        eta=_eta(remaining, processed, elapsed),
    )


def total_row(rows: Sequence[Row], *, elapsed: float) -> Row:
    """The sum of ``rows``, with an ETA from the pace of all feeds together."""
    processed = sum(r.finished - r.skipped + r.failed for r in rows)
    remaining = sum(max(r.total - r.finished - r.failed, 0) for r in rows)
    return Row(
        feed="all",
        total=sum(r.total for r in rows),
        finished=sum(r.finished for r in rows),
        skipped=sum(r.skipped for r in rows),
        failed=sum(r.failed for r in rows),
        rows=sum(r.rows for r in rows),
        pages_per_second=sum(r.pages_per_second for r in rows),
        retries=sum(r.retries for r in rows),
        throttled=sum(r.throttled for r in rows),
        eta=_eta(remaining, processed, elapsed),
    )


def pages_fetched(summary: FeedSummary) -> int:
    """Pages fetched so far, counted live.

    ``pages`` grows only when a window completes, in jumps; requests that were not
    retried are the pages fetched so far, window finished or not.
    """
    return max(summary.pages, summary.counters.requests - summary.counters.retries)


def _eta(remaining: int, processed: int, elapsed: float) -> float | None:
    if remaining == 0:
        return 0.0
    if processed == 0 or elapsed <= 0:
        return None
    return elapsed * remaining / processed


def format_eta(seconds: float | None) -> str:
    """``1:02:03`` for a duration, ``done`` for nothing left, ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds <= 0:
        return "done"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class Meter:
    """Turns successive snapshots into rows: rates need the past, so this keeps some."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, span: float = RATE_SPAN):
        self._clock = clock
        self._span = span
        self._started = clock()
        self._history: deque[tuple[float, dict[str, int]]] = deque()

    def rows(self, feeds: Mapping[str, FeedSummary]) -> tuple[list[Row], float]:
        """The rows for ``feeds`` now, and the seconds since the meter started."""
        now = self._clock()
        self._history.append((now, {feed: pages_fetched(s) for feed, s in feeds.items()}))
        while len(self._history) > 1 and now - self._history[1][0] >= self._span:
            self._history.popleft()
        then, pages_then = self._history[0]
        span = now - then
        elapsed = now - self._started
        rows = [
            progress_row(
                feed,
                summary,
                pages_per_second=(
                    (pages_fetched(summary) - pages_then.get(feed, 0)) / span if span else 0.0
                ),
                elapsed=elapsed,
            )
            for feed, summary in feeds.items()
        ]
        return rows, elapsed


def progress_view(rows: Sequence[Row], *, elapsed: float) -> RenderableType:
    """The display: an overall bar and line, then one row per feed and a total row."""
    total = total_row(rows, elapsed=elapsed)
    head = Table.grid(padding=(0, 1))
    head.add_row(
        ProgressBar(total=max(total.total, 1), completed=total.finished, width=BAR_WIDTH),
        Text(
            f"{total.finished:,}/{total.total:,} windows  {format_eta(elapsed)} elapsed  "
            f"ETA {format_eta(total.eta)}",
            style="bold",
        ),
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("feed", no_wrap=True)
    for header in ("windows", "failed", "rows", "pages/s", "retries", "ETA"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*_cells(row))
    table.add_section()
    table.add_row(*_cells(total), style="bold")
    return Group(head, table)


def windows_cell(row: Row) -> str:
    """``done/total``, or ``done+skipped/total`` when some windows were already done."""
    done = row.finished - row.skipped
    skipped = f"+{row.skipped:,}" if row.skipped else ""
    return f"{done:,}{skipped}/{row.total:,}"


def _cells(row: Row) -> list[RenderableType]:
    return [
        row.feed,
        windows_cell(row),
        Text(f"{row.failed:,}", style="red" if row.failed else ""),
        f"{row.rows:,}",
        f"{row.pages_per_second:,.1f}",
        f"{row.retries:,}",
        format_eta(row.eta),
    ]


class LinesAbove(io.TextIOBase):
    """Stands in for ``sys.stderr`` during the display: prints whole lines above it.

    Text is buffered up to each newline, so a line written in pieces (``print`` writes
    the text, then a newline) is printed once, whole. ANSI colours are kept.
    """

    def __init__(self, console: Console, file: TextIO) -> None:
        self._console = console
        self._file = file
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def rich_proxied_file(self) -> TextIO:
        """The real stream; rich's ``Console(stderr=True)`` writes there, not here."""
        return self._file

    def write(self, text: str) -> int:
        """Buffer ``text``; print every line it completes."""
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        if lines:
            self._print(lines)
        return len(text)

    def flush(self) -> None:
        """Print a pending partial line."""
        with self._lock:
            pending, self._partial = self._partial, ""
        if pending:
            self._print([pending])

    def isatty(self) -> bool:
        """Whether the real stream is a terminal."""
        return self._file.isatty()

    def fileno(self) -> int:
        """The real stream's descriptor."""
        return self._file.fileno()

    def _print(self, lines: Sequence[str]) -> None:
        text = Text("\n").join(Text.from_ansi(line) for line in lines)
        self._console.print(text, soft_wrap=True)


@contextlib.contextmanager
def _stderr_above(console: Console) -> Iterator[None]:
    if not console.is_terminal:
        yield  # a file gets the final frame only; nothing to keep apart
        return
    real = sys.stderr
    sys.stderr = cast(TextIO, LinesAbove(console, real))
    try:
        yield
    finally:
        proxy, sys.stderr = sys.stderr, real
        proxy.flush()


@contextlib.contextmanager
def live_progress(
    snapshot: Snapshot, *, enabled: bool, stream: TextIO | None = None
) -> Iterator[None]:
    """Show live per-feed progress on ``stream`` (stderr) while the block runs.

    ``snapshot`` is called from rich's refresh thread, a few times a second, and once
    more at the end so the last figures stay on screen. With ``enabled`` false nothing
    is drawn and nothing is redirected.
    """
    if not enabled:
        yield
        return
    console = Console(file=stream) if stream is not None else Console(stderr=True)
    meter = Meter()
    last: list[RenderableType] = [Text("")]

    def render() -> RenderableType:
        try:
            rows, elapsed = meter.rows(snapshot())
            last[0] = progress_view(rows, elapsed=elapsed)
        except Exception:
            # Read from another thread, a snapshot may rarely catch a dict mid-update;
            # a display must never stop a harvest, so it shows the previous frame.
            pass
        return last[0]

    live = Live(
        console=console,
        get_renderable=render,
        refresh_per_second=REFRESH_PER_SECOND,
        redirect_stdout=False,
        redirect_stderr=False,  # done by _stderr_above, without rich's re-wrapping of lines
    )
    with live, _stderr_above(console):
        yield
