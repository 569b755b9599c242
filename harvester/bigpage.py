"""Big pages decoded a slice at a time, so a page never costs much more than its body.

Decoding a whole page at once costs its body plus every item as a Python dict (two to
four times the body), then the Arrow rows besides. Above :data:`THRESHOLD`, a body is
instead parsed as a stream (ijson's C backend, as fast as orjson here): items are
converted to Arrow :data:`SLICE` at a time and their dicts dropped, so the page peaks at
about its body plus its Arrow rows.

The page keeps what paging needs of its items without the items: their count, the first
and the last item, and every 50th (the page's fingerprint). The first item is
converted on its own, as the first row, so the item pages overlap by can be dropped as
a row. A body the stream parser refuses (an integer past 64 bits, say) is decoded whole,
as a small page is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ijson
import pyarrow as pa

from harvester.errors import BadResponse
from harvester.schemas import Feed, items_to_table

THRESHOLD = 16 * 1024 * 1024
"""Bodies larger than this are decoded a slice at a time."""
SLICE = 5_000
"""Items decoded and converted at once."""
SAMPLE = 50
"""Every how many items the page's fingerprint samples (as :mod:`harvester.paging` does)."""


class Refused(Exception):
    """The stream parser cannot read this body; decode it whole instead."""


class _Reader:
    """A file over a body in memory: ijson reads it without the copy ``BytesIO`` makes."""

    def __init__(self, body: bytes | bytearray) -> None:
        self._view = memoryview(body)
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        """The next ``size`` bytes (all that is left when ``size`` is negative)."""
        end = len(self._view) if size < 0 else min(len(self._view), self._at + size)
        chunk = self._view[self._at : end].tobytes()
        self._at = end
        return chunk


def _scalar(body: bytes | bytearray, path: str) -> Any:
    try:
        return next(ijson.items(_Reader(body), path))
    except StopIteration:
        return None
    except ijson.JSONError as exc:
        raise Refused(str(exc)) from exc


def decode(
    body: bytes | bytearray, feed: Feed
) -> tuple[int, int, pa.Table, list[dict[str, Any]], int]:
    """Decode a big page of ``feed``: index, items per page, rows, edges and sample, count.

    The rows are in item order by slices, the first item alone as row 0. Raises
    :class:`Refused` when the stream parser cannot read the body, and
    :class:`~harvester.errors.BadResponse` when it is not the documented envelope.
    """
    index = _scalar(body, "data.index")
    per_page = _scalar(body, "data.items_per_page")
    if type(index) is not int or type(per_page) is not int or per_page < 1:
        raise BadResponse("envelope lacks integer data.index/data.items_per_page")
    tables: list[pa.Table] = []
    kept: list[dict[str, Any]] = []  # first, last, and every SAMPLE-th
    count = 0
    last: dict[str, Any] | None = None
    try:
        for chunk in _slices(ijson.items(_Reader(body), "data.items.item", use_float=True)):
            if count == 0 and chunk:
                tables.append(items_to_table(feed, chunk[:1]))
                rest = chunk[1:]
            else:
                rest = chunk
            if rest:
                tables.append(items_to_table(feed, rest))
            for i, item in enumerate(chunk):
                if (count + i) % SAMPLE == 0:
                    kept.append(item)
            count += len(chunk)
            last = chunk[-1]
    except ijson.JSONError as exc:
        raise Refused(str(exc)) from exc
    if last is not None:
        kept.append(last)
    rows = pa.concat_tables(tables) if tables else feed.schema.empty_table()
    return index, per_page, rows, kept, count


def _slices(items: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == SLICE:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
