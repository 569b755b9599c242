"""Small helpers for what the CLI prints to people (not logs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a plain, aligned text table to stdout."""
    text = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
