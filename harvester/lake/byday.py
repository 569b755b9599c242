"""A group commit's spooled rows by UTC day: each spool is read and split once.

A span's spool holds the rows of many days when the span is long (a sparse year is a
few spans). A group commit writes each of those days' files; selecting each day from
the whole spool would read the spool once per day, O(days x rows). :class:`DayRows`
reads a spool the first time one of its days is asked for, cuts it into the days'
rows (zero-copy slices of the memory-mapped file where the rows of a day lie together,
as newest-first pages make them), hands each day out once, and lets the spool go after
its last day. Rows per window are counted in the same pass.
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
    """One day's rows from the spools, and how many fall in each window."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    """Rows per window start."""

    def add(self, other: DayPart) -> None:
        """Take ``other``'s rows in as well."""
        self.batches += other.batches
        for start, rows in other.counts.items():
            self.counts[start] = self.counts.get(start, 0) + rows


def split(table: pa.Table, step: int) -> dict[date, DayPart]:
    """``table``'s rows by UTC day (pure; blocking).

    Rows of a day that lie together in a record batch become one zero-copy slice; a
    batch whose days are interleaved is sorted by time first (a copy of that batch
    only). Windows are ``step`` seconds on the epoch grid; ``step`` divides a day or is
    whole days, so one unit of ``gcd(step, day)`` seconds lies in a single window and a
    single day.
    """
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
        first: date | None = None
        begin = 0
        for cell, start, end in runs:
            instant = cell * unit
            day = date.fromordinal(_EPOCH_ORDINAL + instant // days.DAY)
            part = out.setdefault(day, DayPart())
            window = instant // step * step
            part.counts[window] = part.counts.get(window, 0) + end - start
            if day != first:
                if first is not None:
                    out[first].batches.append(batch.slice(begin, start - begin))
                first, begin = day, start
        if first is not None:
            out[first].batches.append(batch.slice(begin, batch.num_rows - begin))
    return out


def _runs(cells: pa.Array) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` of each run of equal values in ``cells``."""
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
    """The rows of a group's spools, handed out a day at a time (thread-safe).

    ``sources`` pairs each spool with the days it is asked for. A spool is read and
    split when the first of those days is taken, and forgotten (its memory map let go
    once the rows handed out are) after the last.
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
        self._lock = threading.Lock()
        self.reads = 0
        """Spools read so far (each at most once)."""

    def take(self, day: date, wanted: Spans) -> tuple[pa.Table, dict[int, int]]:
        """``day``'s rows in the windows ``wanted``, and rows per window (blocking).

        Each day is handed out once: a second take of it finds nothing.
        """
        found = DayPart()
        with self._lock:
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
        # Rows of windows not asked for (never expected: a spool holds its span's
        # windows, all harvested in this commit); leave them out, counts too.
        table = days.select(table, wanted)
        return table, days.window_counts(table, self.step)
