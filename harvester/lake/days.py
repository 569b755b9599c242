"""Rows by day and by window: the Arrow operations behind a day's file (pure).

Rows are selected by their ``timestamp`` in epoch seconds: which UTC day, which window.
A day's file holds whole windows, so every selection here is by a set of window
intervals (:class:`~harvester.intervals.Spans`). :func:`split_windows` cuts a fresh day
into files of at most ``cap`` rows at window boundaries, and :func:`same_rows` tells a
re-harvested window that brought nothing new from one that did.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from harvester.intervals import Spans

DAY = 86_400
FILE_ROWS = 1_000_000
"""Rows at which a fresh day is cut into more than one file (at window boundaries)."""


SECONDS = pa.timestamp("s", tz="UTC")


def seconds(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """The ``timestamp`` column as int64 epoch seconds, whatever its unit.

    Parquet has no seconds unit: a column written as seconds reads back as milliseconds.
    """
    column = table.column("timestamp")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.type != SECONDS:
        column = column.cast(SECONDS)
    return column.cast(pa.int64())


def in_spans(stamps: pa.Array, spans: Spans) -> pa.Array:
    """A boolean mask: the stamps that fall in ``spans``."""
    mask = None
    for start, end in spans:
        part = pc.and_(pc.greater_equal(stamps, start), pc.less(stamps, end))
        mask = part if mask is None else pc.or_(mask, part)
    return mask if mask is not None else pa.array([False] * len(stamps), type=pa.bool_())


def select(table: pa.Table | pa.RecordBatch, spans: Spans) -> pa.Table:
    """The rows of ``table`` whose stamp lies in ``spans``."""
    if not table.num_rows or not spans:
        return _empty(table)
    stamps = seconds(table)
    bounds = pc.min_max(stamps)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if spans.covers(low, high + 1):
        return table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
    if not spans.clip(low, high + 1):
        return _empty(table)
    kept = table.filter(in_spans(stamps, spans))
    return kept if isinstance(kept, pa.Table) else pa.Table.from_batches([kept])


def _empty(table: pa.Table | pa.RecordBatch) -> pa.Table:
    return table.schema.empty_table()


def window_counts(table: pa.Table, step: int) -> dict[int, int]:
    """Rows per window start (windows of ``step`` seconds on the epoch grid)."""
    if not table.num_rows:
        return {}
    starts = pc.multiply(pc.divide(seconds(table), step), step)
    counts = pc.value_counts(starts)
    return {
        int(v): int(c)
        for v, c in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


def split_windows(counts: dict[int, int], step: int, *, cap: int = FILE_ROWS) -> list[Spans]:
    """Cut windows (``start -> rows``) into consecutive groups of at most ``cap`` rows.

    Each group becomes one file; a single window with more than ``cap`` rows is a group
    of its own (a window always lives in one file). Returns the groups' windows, oldest
    first; empty windows join the group they fall in.
    """
    groups: list[list[int]] = []
    rows = 0
    for start in sorted(counts):
        size = counts[start]
        if groups and rows + size <= cap:
            groups[-1].append(start)
            rows += size
        else:
            groups.append([start])
            rows = size
    return [Spans.of((s, s + step) for s in group) for group in groups]


def sort_key(schema: pa.Schema) -> list[tuple[str, str]]:
    """Every column, ascending: a total order, so equal multisets sort equal."""
    return [(name, "ascending") for name in schema.names]


def same_rows(old: pa.Table, new: pa.Table) -> bool:
    """True when the two tables hold the same rows, in any order."""
    if old.num_rows != new.num_rows:
        return False
    if not old.num_rows:
        return True
    new = new.select(old.schema.names).cast(old.schema)
    key = sort_key(old.schema)
    return bool(old.sort_by(key).equals(new.sort_by(key)))


def concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """One table of ``schema`` from ``tables`` (which may be empty)."""
    parts = [t for t in tables if t.num_rows]
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in parts])
