"""Every knob of the benchmark suite (:class:`Sizes`), and the tiny ones of ``--smoke``.

``python -m benchmarks.run --set NAME=VALUE`` overrides one field; the report lists
them all at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Every knob of the suite. ``--set NAME=VALUE`` on the command line overrides one."""

    seed: int = 7
    limit: int = 1000
    concurrency: int = 8
    prefetch: int = 4
    harvester_rate: float = 10_000.0
    timeout: float = 1800.0
    repeat: int = 1
    warm_up: int = 1
    """1: one unmeasured run of the harvester (and of f's nightly) before the measured ones."""
    baselines: str = "all"
    """Scenarios in which the ceiling, dlt and the naive script run (``all``, or ``c,e2``)."""
    parallel: int = 1
    """Scenarios run at once. Above 1 the numbers disturb each other: for ``--smoke`` only."""
    iceberg: str = "a,e"
    """Scenarios in which the harvester's Iceberg path runs too (``a``, ``e``, both, or none)."""
    # a. CPU-bound
    a_days: int = 8
    a_rows_per_day: int = 20_000
    # b. latency-bound
    b_latency: float = 0.15
    b_feeds: str = "ips,domains,urls"
    b_days: int = 5
    b_rows_per_day: int = 4_000
    b_page: int = 200
    # c. rate-bound
    c_rate_limit: float = 40.0
    c_feeds: str = "ips,domains,urls,paths"
    c_days: int = 5
    c_rows_per_day: int = 3_000
    c_page: int = 100
    # d. one dense day
    d_feed: str = "urls"
    d_sizes: str = "250000,500000,1000000"
    d_baselines: str = "largest"
    # e. sparse year (default flags, the server's own page size) and e2 (filtered to ~1%)
    e_feeds: str = "all"
    e_rows_per_day: int = 20
    e_days: int = 366
    e_month_days: int = 31
    e_long_days: int = 731
    """Two years: peak RSS is flat if it does not grow from e's year to this."""
    e_max_limit: int = 10_000
    """The simulator's largest page (``max_limit``), like the real API's."""
    e_rate: float = 100_000.0
    """The harvester's ``--rate`` in e and e2 (high: never binds)."""
    e_shards: int = 4
    """Processes of e's sharded row (``--shard i/N``, each ``--rate`` e_rate / N)."""
    e2_ioc: str = "pe-packed-upx"
    e2_confidence: int = 90
    e2_severity: int = 90
    # f. no-op nightly
    f_days: str = "1,366,1826"
    f_feeds: str = "all"
    f_stores: str = "local,s3"
    # g. small windows over dense days
    g_window: str = "15m"
    g_days: int = 3
    g_rows_per_day: int = 50_000

    def with_overrides(self, pairs: Sequence[str]) -> Sizes:
        """A copy with ``NAME=VALUE`` pairs applied (typed like the field)."""
        types = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changes: dict[str, Any] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in types:
                raise ValueError(
                    f"--set {pair!r}: expected NAME=VALUE with NAME one of {sorted(types)}"
                )
            changes[name] = types[name](value)
        return replace(self, **changes)


#: The tiny sizes of ``--smoke``: every scenario once, every client in at least one, in
#: seconds (two scenarios at a time, no warm-up runs).
SMOKE = Sizes(
    warm_up=0,
    baselines="c,e2",
    parallel=2,
    # The Iceberg path in e only (two feeds): it runs beside f, the longest, adding little.
    iceberg="e",
    a_days=2,
    a_rows_per_day=150,
    b_latency=0.02,
    b_feeds="ips",
    b_days=2,
    b_rows_per_day=300,
    b_page=100,
    c_rate_limit=50.0,
    c_feeds="ips",
    c_days=2,
    c_rows_per_day=400,
    c_page=100,
    d_sizes="2000,4000",
    e_feeds="ips,domains",
    e_rows_per_day=5,
    e_days=20,
    e_month_days=5,
    e_long_days=40,
    e_shards=2,
    f_days="1,40",
    f_feeds="ips,urls",
    g_days=1,
    g_rows_per_day=500,
    timeout=300.0,
)
