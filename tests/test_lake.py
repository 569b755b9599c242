"""The lake writer on its own: a window cancelled mid-write leaves nothing and crashes nothing."""

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import harvester.lake as lake
from harvester.lake import WindowWriter
from harvester.schemas import FEEDS, items_to_table
from harvester.storage import LocalStore
from harvester.windows import Window

WINDOW = Window(start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 2, tzinfo=UTC))


def test_a_cancelled_window_closes_its_file_only_after_the_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel lands while a row group is written in its thread: close waits, nothing is left."""
    events: list[str] = []
    writing = threading.Event()

    class SlowWriter(pq.ParquetWriter):  # a real writer, made slow enough to race
        def write_table(self, *args: object, **kwargs: object) -> None:
            events.append("write.start")
            writing.set()
            time.sleep(0.3)
            super().write_table(*args, **kwargs)
            events.append("write.end")

        def close(self) -> None:
            events.append("close")
            super().close()

    monkeypatch.setattr(lake.pq, "ParquetWriter", SlowWriter)
    feed = FEEDS["domains"]
    items = [{"timestamp": f"2024-01-01T00:00:{s:02d}Z", "domain": "d"} for s in range(10)]
    table = items_to_table(feed, items)

    async def main() -> None:
        async def window() -> None:
            async with WindowWriter(LocalStore(tmp_path), feed, WINDOW, row_group_rows=5) as w:
                await w.add(table)  # ten rows, row groups of five: written now, in a thread
                await asyncio.sleep(10)

        task = asyncio.create_task(window())
        await asyncio.to_thread(writing.wait, 10)
        task.cancel()  # as Harvest.stop() does
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events == ["write.start", "write.end", "close"]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
