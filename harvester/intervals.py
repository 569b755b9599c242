"""Sets of half-open integer intervals: which seconds of time are complete, todo or failed.

:class:`Spans` is an immutable, normalised set of ``[start, end)`` intervals of epoch
seconds: sorted, disjoint and never touching (``[0, 5) | [5, 9)`` is ``[0, 9)``). The
manifest keeps the complete windows of a feed as one, the planner subtracts it from the
range asked for, and ``status`` turns it into days. Everything here is pure and linear
in the number of intervals, so a lake's history costs its number of gaps, not its
number of windows.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Pair = tuple[int, int]


def _merge(pairs: Iterable[Pair]) -> tuple[Pair, ...]:
    merged: list[list[int]] = []
    for start, end in sorted(p for p in pairs if p[0] < p[1]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


@dataclass(frozen=True, slots=True)
class Spans:
    """A normalised set of half-open intervals ``[start, end)`` of integers."""

    pairs: tuple[Pair, ...] = ()

    @classmethod
    def of(cls, pairs: Iterable[Pair | list[int]]) -> Spans:
        """The union of ``pairs`` (in any order; empty or reversed pairs are ignored)."""
        return cls(_merge((int(p[0]), int(p[1])) for p in pairs))

    @classmethod
    def one(cls, start: int, end: int) -> Spans:
        """``[start, end)``, or nothing when it is empty."""
        return cls(((start, end),) if start < end else ())

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def total(self) -> int:
        """The summed length of the intervals."""
        return sum(e - s for s, e in self.pairs)

    @property
    def first(self) -> int | None:
        """The smallest member, or None."""
        return self.pairs[0][0] if self.pairs else None

    @property
    def last(self) -> int | None:
        """The end of the last interval (exclusive), or None."""
        return self.pairs[-1][1] if self.pairs else None

    def __or__(self, other: Spans) -> Spans:
        return Spans(_merge((*self.pairs, *other.pairs)))

    def __sub__(self, other: Spans) -> Spans:
        out: list[Pair] = []
        cuts = other.pairs
        j = 0
        for start, end in self.pairs:
            while j < len(cuts) and cuts[j][1] <= start:
                j += 1
            k, cursor = j, start
            while k < len(cuts) and cuts[k][0] < end:
                if cuts[k][0] > cursor:
                    out.append((cursor, cuts[k][0]))
                cursor = max(cursor, cuts[k][1])
                k += 1
            if cursor < end:
                out.append((cursor, end))
        return Spans(tuple(out))

    def __and__(self, other: Spans) -> Spans:
        out: list[Pair] = []
        a, b = self.pairs, other.pairs
        i = j = 0
        while i < len(a) and j < len(b):
            start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if start < end:
                out.append((start, end))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return Spans(tuple(out))

    def clip(self, start: int, end: int) -> Spans:
        """The part of the set inside ``[start, end)``."""
        return self & Spans.one(start, end)

    def covers(self, start: int, end: int) -> bool:
        """True when ``[start, end)`` lies wholly inside one interval (an empty range: True)."""
        if start >= end:
            return True
        found = self.containing(start)
        return found is not None and end <= found[1]

    def containing(self, point: int) -> Pair | None:
        """The interval holding ``point``, or None."""
        i = bisect_right(self.pairs, (point, float("inf"))) - 1
        if i >= 0 and self.pairs[i][0] <= point < self.pairs[i][1]:
            return self.pairs[i]
        return None

    def to_json(self) -> list[list[int]]:
        """``[[start, end], ...]``, for JSON."""
        return [[s, e] for s, e in self.pairs]
