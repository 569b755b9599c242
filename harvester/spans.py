"""Query spans: what one paged query covers, carved to follow the data's density.

Windows stay the unit of exactness; a *span* is only what one paged query asks for: a
run of consecutive todo windows of one feed. Its rows are routed to their own windows.
How long a span is follows the density the run has seen so far, so that a span holds
about :data:`SPAN_PAGES` pages:

* a sparse stretch is one query of weeks, months or the whole range (up to
  ``max_span``);
* a dense stretch is a day or less, and several spans run at once;
* nothing is known at first, so the first span of a feed is as long as allowed; its
  first page tells the density (items come newest first, so the page's oldest stamp
  says how much time one page covers), and a span found too dense is given back to be
  carved again at the new density (one request spent learning).

A span the server refuses as too long, or whose paging goes wrong, is cut in two
(:meth:`Span.halves`) down to single windows; the server's refusal also caps later
spans. Everything here is pure except :class:`SpanQueue`'s bookkeeping, which no
I/O touches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harvester.intervals import Spans

DAY = 86_400
SPAN_PAGES = 16
"""Pages a span is carved to hold, once the density is known."""
TOO_DENSE = 2.0
"""A span expected to hold this many times :data:`SPAN_PAGES` is carved again."""


@dataclass(frozen=True, kw_only=True, order=True)
class Span:
    """One paged query: ``feed`` over ``[start, end)`` (epoch seconds, on the window grid)."""

    start: int
    end: int
    feed: str

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"empty span {self.start}..{self.end}")

    @property
    def length(self) -> int:
        """Seconds covered."""
        return self.end - self.start

    def windows(self, step: int) -> int:
        """How many windows of ``step`` seconds it holds."""
        return self.length // step

    def halves(self, step: int) -> tuple[Span, Span]:
        """Two spans of about half the windows each, cut at a day boundary if there is one.

        Raises ValueError for a span of one window: it cannot be cut.
        """
        count = self.windows(step)
        if count < 2:
            raise ValueError("a span of one window cannot be cut")
        middle = self.start + (count // 2) * step
        if step <= DAY and DAY % step == 0 and self.length >= 2 * DAY:
            day = round(middle / DAY) * DAY
            if self.start < day < self.end:
                middle = day
        return (
            Span(feed=self.feed, start=self.start, end=middle),
            Span(feed=self.feed, start=middle, end=self.end),
        )


def carve(todo: Spans, *, feed: str, step: int, length: int | None, limit: int) -> Span | None:
    """The next span of ``todo`` (oldest first): ``length`` seconds, at most ``limit``.

    ``length`` None means "as long as allowed" (the density is not known yet). The span
    ends on the window grid, and on a day boundary when it is a day or longer and the
    grid has day boundaries, so a day's windows are fetched together when they can be.
    """
    if not todo:
        return None
    start, stop = todo.pairs[0]
    wanted = limit if length is None else max(step, min(length, limit))
    end = min(stop, start + wanted)
    end = start + max(1, (end - start) // step) * step
    if end < stop and end - start >= DAY and step <= DAY and DAY % step == 0:
        day = end // DAY * DAY
        if day > start:
            end = day
    return Span(feed=feed, start=start, end=min(end, stop))


def span_length(density: float | None, *, page: int, pages: int = SPAN_PAGES) -> int | None:
    """Seconds that hold about ``pages`` pages of ``page`` items at ``density`` items/s."""
    if density is None:
        return None
    return int(pages * page / density) if density > 0 else None


def too_dense(span: Span, *, density: float, page: int) -> bool:
    """Whether ``span`` at ``density`` would hold many more pages than a span should."""
    return span.length * density / max(page, 1) > TOO_DENSE * SPAN_PAGES


@dataclass(kw_only=True)
class _Feed:
    todo: Spans
    density: float | None = None
    page: int = 1000
    in_flight: int = 0
    redo: deque[Span] = field(default_factory=deque)


class SpanQueue:
    """The spans a run has left, carved on demand from each feed's todo windows.

    Workers :meth:`take` a span, and report back: :meth:`learn` what density it had,
    :meth:`give_back` a span to carve again, :meth:`redo` the halves of a cut span, or
    :meth:`done` when it is finished either way. Feeds take turns, the one with the
    fewest spans in flight first, so one dense feed does not starve the others.
    """

    def __init__(self, todo: Mapping[str, Spans], *, step: int, max_span: int, page: int) -> None:
        self.step = step
        self.max_span = max(step, max_span // step * step)
        self._feeds = {f: _Feed(todo=s, page=page) for f, s in todo.items() if s}
        self._unproven = False  # the server refused a length: try the next one alone
        self._probe: Span | None = None

    def __bool__(self) -> bool:
        return any(f.todo or f.redo for f in self._feeds.values())

    def remaining(self, feed: str) -> Spans:
        """Todo windows of ``feed`` not yet taken."""
        state = self._feeds.get(feed)
        if state is None:
            return Spans()
        return state.todo | Spans.of((s.start, s.end) for s in state.redo)

    def take(self) -> Span | None:
        """The next span to harvest, or None when nothing is to be handed out now.

        After the server refused a span as too long, one span at the shorter length is
        tried alone before others are carved at it: a refusal costs one request, not one
        per worker.
        """
        ready = [(f, s) for f, s in self._feeds.items() if s.todo or s.redo]
        if not ready or self._probe is not None:
            return None
        name, state = min(ready, key=lambda fs: (fs[1].in_flight, _first(fs[1]), fs[0]))
        if state.redo:
            span = state.redo.popleft()
            if span.length > self.max_span:
                # Cut before a cap learnt since: its tail waits its turn again.
                head = Span(feed=name, start=span.start, end=span.start + self.max_span)
                state.redo.appendleft(Span(feed=name, start=head.end, end=span.end))
                span = head
        else:
            length = span_length(state.density, page=state.page)
            carved = carve(
                state.todo, feed=name, step=self.step, length=length, limit=self.max_span
            )
            assert carved is not None
            span = carved
            state.todo = state.todo - Spans.one(span.start, span.end)
        state.in_flight += 1
        if self._unproven:
            self._probe = span
        return span

    def learn(self, feed: str, *, density: float, page: int | None = None) -> None:
        """What ``feed``'s data looks like now: items per second, the server's page size."""
        state = self._feeds.get(feed)
        if state is not None:
            state.density = density
            if page:
                state.page = page

    def density(self, feed: str) -> float | None:
        """The latest density seen for ``feed``."""
        state = self._feeds.get(feed)
        return state.density if state else None

    def page(self, feed: str) -> int:
        """The latest page size the server applied for ``feed``."""
        state = self._feeds.get(feed)
        return state.page if state else 1

    def give_back(self, span: Span) -> None:
        """Return ``span`` untouched, to be carved again (at the density learnt since)."""
        if span == self._probe:
            self._probe = None
        state = self._feeds[span.feed]
        state.todo = state.todo | Spans.one(span.start, span.end)
        state.in_flight -= 1

    def redo(self, spans: Iterable[Span]) -> None:
        """Harvest ``spans`` (the halves of a span that went wrong) next, as they are."""
        pieces = sorted(spans)
        if pieces:
            self._settle(Span(feed=pieces[0].feed, start=pieces[0].start, end=pieces[-1].end))
            state = self._feeds[pieces[0].feed]
            state.redo.extendleft(reversed(pieces))
            state.in_flight -= 1

    def refused(self, span: Span) -> None:
        """The server refused ``span`` (too long?): spans are at most half as long from now."""
        self.max_span = max(
            self.step, min(self.max_span, span.length // 2 // self.step * self.step)
        )
        self._unproven = True
        self.give_back(span)

    def _settle(self, span: Span) -> None:
        if span == self._probe:
            self._probe = None
            self._unproven = False  # the length held

    def done(self, span: Span) -> None:
        """``span`` is finished (harvested, or failed for good)."""
        self._settle(span)
        self._feeds[span.feed].in_flight -= 1

    def drop(self, feed: str, spans: Spans) -> None:
        """Forget todo windows of ``feed`` (another run holds them)."""
        state = self._feeds.get(feed)
        if state is not None:
            state.todo = state.todo - spans
            state.redo = deque(s for s in state.redo if not spans.covers(s.start, s.end))


def _first(state: _Feed) -> int:
    firsts = [s.start for s in state.redo] + ([state.todo.first] if state.todo else [])
    return min(x for x in firsts if x is not None)
