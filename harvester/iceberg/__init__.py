"""Apache Iceberg tables for the lake (``--table-format iceberg``): the building blocks.

One module per concept: :mod:`.catalog` (which catalog, from ``--catalog``),
:mod:`.tables` (schema, partition spec, the Parquet files), :mod:`.commit` (one atomic
replacement of a group of windows), :mod:`.ancestry` (is a unit's commit still in the
table?), :mod:`.hint` (the ``version-hint.text`` DuckDB reads), :mod:`.maintain`
(expiry, compaction, orphans), :mod:`.reader` (windows read back, for the indicator
table) and :mod:`.ddl` (DuckDB views, Athena's answer).

pyiceberg is an optional extra (``threatgrid-harvester[iceberg]``). This package's
``__init__`` does not import it, and nothing outside ``harvester.iceberg`` imports a
module of this package at import time, so a Hive-only install never loads it.

What pyiceberg 0.12 really does (read from its source and checked by our tests):

* **Catalogs.** ``load_catalog(name, **props)`` merges ``~/.pyiceberg.yaml`` (or
  ``$PYICEBERG_HOME/.pyiceberg.yaml``, then the working folder) with
  ``PYICEBERG_CATALOG__NAME__KEY`` variables, read once when ``pyiceberg.catalog`` is
  imported; explicit properties win. The type comes from ``type`` or is inferred from
  ``uri``: ``http*`` REST, ``thrift`` Hive, ``sqlite*``/``postgresql*`` SQL. Glue needs
  ``type: glue``. A REST catalog contacts its server in the constructor; a SQL catalog
  creates its tables on first use; Postgres needs a driver (psycopg2) installed.
* **Commits and retries.** ``Transaction.commit_transaction`` retries a
  ``CommitFailedException`` by itself: ``commit.retry.num-retries`` (default 4) times
  with exponential backoff, refreshing the table and rebuilding every registered
  snapshot producer on the new head, after checking the producer's concurrency rules
  (isolation ``serializable`` by default: a concurrently added file that may hold rows
  our delete predicate matches is a ``ValidationException``; so is a file we planned to
  remove that someone else removed). A snapshot id is kept across attempts as an
  idempotency key. It does not retry a ``ValidationException``, nor a commit given up
  after its retries: :mod:`.commit` replans and redoes the whole transaction then.
* **delete + add_files in one transaction** is one catalog commit (atomic), but it
  writes up to three snapshots (DELETE, OVERWRITE for partly matching files, APPEND),
  warns "did not match any records" when nothing matched, and rewrites each partly
  matching file by reading it whole (``ArrowScan.to_table`` of one file at a time) into
  memory. :mod:`.commit` therefore builds the replacement itself: files wholly inside
  the windows are dropped by their column bounds, partly matching files are rewritten by
  streaming their row groups, and one OVERWRITE producer removes and adds everything:
  one snapshot per commit, memory bounded by a record batch.
* **Snapshot summary.** ``snapshot_properties`` of a producer are merged into the
  snapshot's summary; :func:`.commit.summary_properties` builds ours.
* **Maintenance.** ``table.maintenance.expire_snapshots().older_than(dt).commit()``
  removes snapshots from the metadata (never a branch or tag head) and deletes no file.
  There is no compaction (rewrite data files) and no orphan-file removal in 0.12:
  :mod:`.maintain` compacts by rewriting a day's small files into one and committing an
  overwrite that removes exactly the inputs (pyiceberg refuses it if an input is gone),
  and removes unreferenced files under the table's ``data/`` and ``metadata/`` folders
  that are older than a grace period (one day by default).
* **add_files / partition values.** ``parquet_file_to_data_file`` reads a file's footer
  only: it checks the Arrow schema against the table's (by field id, else by the name
  mapping), takes column bounds from the Parquet statistics and derives the partition
  value from the ``timestamp`` column's min and max, which must fall on one day
  (``day(timestamp)`` is order preserving); a file spanning two days is refused, and an
  empty file has no partition. Iceberg timestamps are microseconds, so the lake's
  ``timestamp[s]`` is written as ``timestamp[us, UTC]`` with ``PARQUET:field_id``.
* **DuckDB 1.4.4.** ``iceberg_scan(path)`` reads a metadata file, or a table folder with
  ``metadata/version-hint.text``; a SQL or Glue catalog writes no hint, and ``ATTACH ...
  (TYPE iceberg)`` speaks only the REST protocol. :mod:`.hint` writes the hint (the
  current metadata file's name) after every commit, so a view over
  ``iceberg_scan('{out}/{feed}', version_name_format => '%s%s.metadata.json')`` made
  before a run sees that run's rows.
"""

from __future__ import annotations

from harvester.errors import ConfigError

INSTALL_HINT = "pip install 'threatgrid-harvester[iceberg]'"


def require_pyiceberg() -> None:
    """Raise a one-line :class:`ConfigError` when pyiceberg is not installed."""
    import importlib.util

    if importlib.util.find_spec("pyiceberg") is None:
        raise ConfigError(f"Iceberg tables need pyiceberg, which is not installed; {INSTALL_HINT}")
