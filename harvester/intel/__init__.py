"""Threat intelligence from the lake: the indicator table and its exports.

``harvester indicators`` builds ``{out}/indicators/type={type}/indicators.parquet``, one
row per (type, value) over every record of the lake (:mod:`~harvester.intel.build`);
``harvester export`` writes it as a STIX 2.1 bundle, a MISP feed, CSV or a plain
blocklist (:mod:`~harvester.intel.export`).

    schema.py     the table's columns, the type map, where everything lives     (pure)
    source.py     DaySource: a (feed, day)'s data and a token of its version; a listing
    manifest_source.py   days, tokens and rows as the lake's manifest records them
    state.py      which version of each (feed, day) the partials hold; the update plan
    resources.py  DuckDB's memory limit (without importing DuckDB)
    engine.py     one bounded-memory DuckDB session; query results -> Parquet
    aggregate.py  the SQL: a day -> partial rows -> indicator rows
    build.py      `harvester indicators`: partials and tables, updated in a safe order
    filters.py    what an export leaves out, and why                              (pure)
    ids.py        UUIDv5 ids of exported objects                                  (pure)
    stix.py misp.py tabular.py   the formats
    export.py     `harvester export`: read, filter, write, commit
"""
