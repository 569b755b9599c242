"""One DuckDB session with bounded memory, and query results streamed into Parquet.

DuckDB does the heavy grouping of the indicator build (and sorts a MISP export): its
hash aggregates, joins and sorts spill to ``temp_directory`` once ``memory_limit`` is
reached, so a lake of years is built in a fixed amount of memory. It only ever reads
local files and Arrow tables handed to it; the lake is read and written through the
:class:`~harvester.storage.Store`, never by DuckDB itself (no httpfs).

A session runs its work on a thread of its own (:meth:`Engine.run`): the connection is
not thread-safe, and one thread keeps the allocator's per-thread caches to one set.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import ConfigError, StorageError
from harvester.intel.resources import DEFAULT_MEMORY_LIMIT, check_memory_limit

P = ParamSpec("P")
T = TypeVar("T")
BATCH_ROWS = 64 * 1024
COMPRESSION = "zstd"


class Engine:
    """A DuckDB connection limited to ``memory_limit``, spilling into ``work_dir``."""

    def __init__(self, work_dir: Path, *, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        self.work_dir = work_dir
        self.memory_limit = memory_limit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duckdb")
        spill = work_dir / "spill"
        spill.mkdir(parents=True, exist_ok=True)
        # Never fetch or load an extension at run time: the lake comes through the Store.
        self._con = duckdb.connect(
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        # Each thread adds working memory of its own: two are plenty for the
        # day-sized groups of an update, and a rebuild is I/O- as much as CPU-bound.
        threads = max(1, min(4, os.cpu_count() or 1))
        settings = self._con.execute("SELECT name FROM duckdb_settings()").fetchall()
        known = {name for (name,) in settings}
        for setting, value in (
            ("memory_limit", check_memory_limit(memory_limit)),
            ("temp_directory", str(spill)),
            ("threads", threads),
            ("preserve_insertion_order", False),  # lets big results stream
            # every file is read once: caching them would only fill memory up to the limit
            ("enable_external_file_cache", False),
            ("allocator_background_threads", True),  # returns freed memory sooner
        ):
            if setting in known:  # the last two are newer than some DuckDB releases we allow
                self._con.execute(f"SET {setting} = ?", [value])
        self._con.execute("SET TimeZone = 'UTC'")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking ``fn`` (which uses this session) on the session's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Close the connection (its spill files go with it) and its thread."""
        self._executor.shutdown(wait=True)
        self._con.close()

    def write(
        self,
        sql: str,
        path: Path,
        schema: pa.Schema,
        *,
        params: Mapping[str, Any] | None = None,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> int:
        """Run ``sql`` and stream its rows, as ``schema``, into a Parquet file at ``path``.

        ``tables`` are Arrow tables the query may name. Returns the number of rows; the
        file is written (with the schema) even when there are none.
        """
        return self.write_all([(sql, params or {})], path, schema, tables=tables)

    def write_all(
        self,
        queries: Sequence[tuple[str, Mapping[str, Any]]],
        path: Path,
        schema: pa.Schema,
        *,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> int:
        """Like :meth:`write`, for several (sql, params) whose rows follow one another."""
        for name, table in (tables or {}).items():
            self._con.register(name, table)
        try:
            rows = 0
            with pq.ParquetWriter(path, schema, compression=COMPRESSION) as writer:
                for sql, params in queries:
                    reader = self._run(sql, params).fetch_record_batch(BATCH_ROWS)
                    for batch in reader:
                        if batch.num_rows:
                            table = pa.Table.from_batches([batch]).rename_columns(schema.names)
                            writer.write_table(table.cast(schema), row_group_size=BATCH_ROWS)
                            rows += batch.num_rows
            return rows
        except duckdb.OutOfMemoryException as exc:
            raise _memory_error(exc) from exc
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            first = str(exc).splitlines()[0]
            raise StorageError(
                f"DuckDB failed reading or writing a file ({first}); if a partial or table "
                "file is damaged run harvester indicators --rebuild, if the disk is full free "
                f"space under {self.work_dir.parent} (TMPDIR)"
            ) from exc
        finally:
            for name in tables or {}:
                self._con.unregister(name)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """A small query's rows."""
        try:
            return self._run(sql, params).fetchall()
        except duckdb.OutOfMemoryException as exc:
            raise _memory_error(exc) from exc

    def _run(self, sql: str, params: Mapping[str, Any] | None) -> duckdb.DuckDBPyConnection:
        return self._con.execute(sql, dict(params or {}))


def _memory_error(exc: BaseException) -> ConfigError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConfigError(f"DuckDB ran out of memory ({first}); raise --memory-limit")
