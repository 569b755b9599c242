"""A commit's spooled rows by UTC day: each spool is read and split once.

A span's spool holds the rows of many days when the span is long (a sparse year is a
few spans). A commit writes each of those days' files; selecting each day from the
whole spool would read and filter the spool once per day, O(days x rows), and count
each day's windows again. :class:`DayRows` reads a spool the first time one of its
days is asked for, cuts it into the days' rows (zero-copy slices where the rows of a
day lie together, as newest-first pages make them), counts rows per window in the same
pass, hands each day out once, and lets the spool's rows go after its last day.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from harvester.intervals import Spans
from harvester.lake import days
from harvester.lake.spool import Spool

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@dataclass(kw_only=True)
class DayPart:
    """One day's rows (as they are gathered: mutable), and how many fall in each window."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    """Rows per window start."""

    def add(self, other: DayPart) -> None:
        """Take ``other``'s rows in as well."""
        self.batches += other.batches
        for start, rows in other.counts.items():
            self.counts[start] = self.counts.get(start, 0) + rows


def split(table: pa.Table, step: int) -> dict[date, DayPart]:
    """``table``'s rows by UTC day, with rows per window of ``step`` seconds (pure; blocking).

    Rows of a day that lie together in a record batch become one zero-copy slice; a
    batch whose days are interleaved is sorted by time first (a copy of that batch
    only). Windows lie on the epoch grid: a cell of ``gcd(step, day)`` seconds lies in
    a single window and a single day, both being whole cells.
    """
    if step <= 0:
        raise ValueError(f"window size must be positive, not {step}")
    unit = math.gcd(step, days.DAY)
    out: dict[date, DayPart] = {}
    for batch in table.to_batches():
        if not batch.num_rows:
            continue
        cells = pc.divide(days.seconds(batch), unit)
        runs = _runs(cells)
        if len(runs) != pc.count_distinct(cells).as_py():
            order = pc.sort_indices(cells)
            batch, cells = batch.take(order), cells.take(order)
            runs = _runs(cells)
        current: date | None = None
        begin = 0
        for cell, start, end in runs:
            instant = cell * unit
            day = date.fromordinal(_EPOCH_ORDINAL + instant // days.DAY)
            part = out.setdefault(day, DayPart())
            window = instant // step * step
            part.counts[window] = part.counts.get(window, 0) + end - start
            if day != current:
                if current is not None:
                    out[current].batches.append(batch.slice(begin, start - begin))
                current, begin = day, start
        if current is not None:
            out[current].batches.append(batch.slice(begin, batch.num_rows - begin))
    return out


def _runs(cells: pa.Array) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` of each run of equal values in ``cells`` (not empty)."""
    n = len(cells)
    if n == 1:
        return [(cells[0].as_py(), 0, 1)]
    changed = pc.not_equal(cells.slice(1), cells.slice(0, n - 1))
    cuts = [i + 1 for i in pc.indices_nonzero(changed).to_pylist()]
    starts = [0, *cuts]
    ends = [*cuts, n]
    values = cells.take(pa.array(starts, type=pa.int64())).to_pylist()
    return list(zip(values, starts, ends, strict=True))


class DayRows:
    """The rows of a commit's spools, handed out a day at a time (thread-safe).

    ``sources`` pairs each spool with the days it is asked for. A spool is read and
    split when the first of those days is taken, and forgotten after the last (its
    memory map is let go once the rows handed out are).
    """

    def __init__(
        self,
        sources: Iterable[tuple[Spool, Iterable[date]]],
        *,
        step: int,
        schema: pa.Schema,
    ) -> None:
        self.step = step
        self.schema = schema
        self._spools: list[Spool] = []
        self._wanted: list[set[date]] = []
        for spool, wanted in sources:
            self._spools.append(spool)
            self._wanted.append(set(wanted))
        self._split: dict[int, dict[date, DayPart]] = {}
        self._taken: set[date] = set()
        self._lock = threading.Lock()
        self.reads = 0
        """Spools read so far (each at most once)."""

    def take(self, day: date, wanted: Spans) -> tuple[pa.Table, dict[int, int]]:
        """``day``'s rows in the windows ``wanted``, and rows per window (blocking).

        Each day is handed out once: its rows are let go then, so a second take of
        it is a bug, and raises rather than hand out a day without its rows.
        """
        found = DayPart()
        with self._lock:
            if day in self._taken:
                raise RuntimeError(f"the spooled rows of {day} were taken already")
            self._taken.add(day)
            for index, days_wanted in enumerate(self._wanted):
                if day not in days_wanted:
                    continue
                parts = self._split.get(index)
                if parts is None:
                    self.reads += 1
                    parts = self._split[index] = split(self._spools[index].read(), self.step)
                part = parts.pop(day, None)
                if part is not None:
                    found.add(part)
                days_wanted.discard(day)
                if not days_wanted:
                    del self._split[index]
        return self._within(found, wanted)

    def _within(self, part: DayPart, wanted: Spans) -> tuple[pa.Table, dict[int, int]]:
        table = pa.Table.from_batches(part.batches, schema=self.schema)
        if all(wanted.containing(start) for start in part.counts):
            return table, part.counts
        # Rows of windows not asked for (a window of the span another run completed
        # meanwhile, or a window longer than a day, whose start is on another day):
        # select by time, as a day's rows always were.
        table = days.select(table, wanted)
        return table, days.window_counts(table, self.step)
