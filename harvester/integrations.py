"""Glue between orchestrators (Airflow, Dagster) and the Python API, without importing either.

An orchestrator thinks in *data intervals* (Airflow's ``data_interval_start`` and
``data_interval_end``) or *partitions* (Dagster's daily key ``YYYY-MM-DD``); the
harvester thinks in windows on a fixed UTC grid (``--window``). This module maps the
one onto the other, runs the harvest through :func:`harvester.harvest`, and turns its
:class:`~harvester.report.RunResult` into JSON-able data (for XCom) and numbers (for
asset metadata). ``deploy/airflow_dag.py`` and ``deploy/dagster_assets.py`` are thin
shells around these functions, which are tested without Airflow or Dagster installed.

**The interval rule.** An interval ``[start, end)`` harvests ``[floor(start),
floor(end))``, both floored to the window grid: exactly the windows whose *end* lies
in ``(start, end]``. Adjacent intervals share a bound, so every window end falls in
exactly one of them: re-runs and back-fills of adjacent intervals never harvest a
window twice and never leave one out, whatever the intervals' length, time zone or
offset from the grid. A window is harvested only once it has ended, by the interval
in which it ends. An interval that holds no window end (shorter than a window, or a
23-hour day of a DST zone whose offset is zero) is an *empty harvest*: nothing is
asked of the API and nothing is written, and it succeeds; its windows belong to a
neighbour.

**Dagster partitions** are UTC days, whatever ``--window`` is: partition
``2024-01-15`` harvests ``[2024-01-15T00:00:00Z, 2024-01-16T00:00:00Z)``, every window
of that day. A window longer than a day cannot belong to one day, so it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from harvester import api
from harvester.config import API_KEY_ENV, DEFAULTS, load_toml
from harvester.errors import (
    AuthError,
    ConfigError,
    HarvesterError,
    IncompleteHarvest,
    StorageError,
    TransientStorageError,
)
from harvester.report import FeedSummary, RunResult
from harvester.secret import Secret
from harvester.windows import DAY, floor_to, format_api, format_duration, parse_duration

PathLike = str | os.PathLike[str]

DECIDED_BY_INTERVAL = ("after", "before", "since_last")
"""Options the interval (or partition) decides; passing them as well is refused."""

FAILURES_SHOWN = 3
"""Failed windows named in an :class:`IncompleteHarvest` message; the rest are counted."""


@dataclass(frozen=True, kw_only=True)
class HarvestSpan:
    """The harvester's ``[after, before)`` for an interval: grid edges, possibly empty."""

    after: datetime
    before: datetime

    def __post_init__(self) -> None:
        for name in ("after", "before"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() != timedelta(0):
                raise ValueError(f"{name} must be an aware UTC datetime, not {value!r}")
        if self.before < self.after:
            raise ValueError(f"span ends before it starts: {self.after} .. {self.before}")

    @property
    def empty(self) -> bool:
        """True when the span holds no window: nothing to harvest."""
        return self.after == self.before

    def to_json(self) -> dict[str, str]:
        """``after`` and ``before`` in the API's form, ``YYYY-MM-DDTHH:MM:SSZ``."""
        return {"after": format_api(self.after), "before": format_api(self.before)}


def _utc(value: datetime | None, name: str) -> datetime:
    """``value`` in UTC; a missing or naive one is refused (a guessed zone moves windows)."""
    if value is None:
        raise ConfigError(
            f"{name} is missing: the run has no data interval; give the DAG a schedule "
            "or trigger it with a logical date"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"{name} {value.isoformat()} has no time zone; pass an aware datetime")
    utc = value.astimezone(UTC)
    # Airflow passes pendulum's DateTime, a subclass whose differences are pendulum's own
    # Interval, which does not mix with timedelta arithmetic: go on with a plain datetime.
    return datetime(*utc.timetuple()[:6], utc.microsecond, tzinfo=UTC)


def snap_interval(start: datetime | None, end: datetime | None, window: timedelta) -> HarvestSpan:
    """The span an orchestrator's interval ``[start, end)`` harvests (see the module doc).

    Both bounds are floored to the ``window`` grid, so the span holds exactly the
    windows that end within ``(start, end]``; it is empty when there is none. An
    interval that is empty or reversed (``end <= start``), or a bound that is missing
    or naive, is a :class:`ConfigError`.
    """
    first, last = _utc(start, "data_interval_start"), _utc(end, "data_interval_end")
    if not first < last:
        raise ConfigError(
            f"the data interval [{first.isoformat()}, {last.isoformat()}) is empty or "
            "reversed; use a schedule whose runs cover a span of time"
        )
    # The grid has whole seconds; a fraction of a second never moves a floor across an edge.
    return HarvestSpan(after=floor_to(first, window), before=floor_to(last, window))


def day_span(key: str) -> HarvestSpan:
    """The span of a daily partition ``YYYY-MM-DD``: that UTC day, midnight to midnight."""
    try:
        day = date.fromisoformat(key) if len(key) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise ConfigError(f"partition key {key!r} is not a day; use YYYY-MM-DD, e.g. 2024-01-15")
    after = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return HarvestSpan(after=after, before=after + DAY)


def resolve_window(config_path: PathLike | None = None, /, **options: Any) -> timedelta:
    """The ``--window`` a harvest with these options would use (keywords win over the file)."""
    value = options.get("window")
    if value is None and config_path is not None:
        value = load_toml(os.fspath(config_path)).get("window")
    return parse_duration(str(value if value is not None else DEFAULTS["window"]))


def harvest_interval(
    start: datetime | None,
    end: datetime | None,
    config_path: PathLike | None = None,
    /,
    *,
    api_key: str | Secret | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Harvest the windows of an orchestrator's interval; return the JSON-able outcome.

    The configuration comes from ``config_path`` (the TOML file the CLI reads) and
    keyword ``options`` spelled like the CLI's flags, keywords winning; the interval
    decides ``after`` and ``before`` (:func:`snap_interval`), so those and
    ``since_last`` are refused as keywords, and replaced (``since_last`` turned off)
    when the file has them. ``api_key`` defaults to ``THREATGRID_API_KEY`` in
    ``env`` (default ``os.environ``). The harvest itself is :func:`harvester.harvest`.

    Returns ``{"after", "before", "harvested", "metadata", "result"}``: the span, whether
    anything was harvested (false for an empty span, when no harvest runs and the
    other two are ``None``), :func:`run_metadata` and ``RunResult.to_json()``.
    Raises :class:`~harvester.errors.IncompleteHarvest` when windows failed, or were
    left to another run holding their lease (retry the task: the next attempt
    finishes them), and the :mod:`harvester.errors` tree
    for what stops a run (see :func:`retryable`).
    """
    refused = sorted(set(options) & set(DECIDED_BY_INTERVAL))
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} cannot be given to an interval harvest: the data "
            "interval decides the range; remove them"
        )
    span = snap_interval(start, end, resolve_window(config_path, **options))
    return _harvest_span(span, config_path, api_key=api_key, env=env, options=options)


def harvest_day(
    key: str,
    config_path: PathLike | None = None,
    /,
    *,
    api_key: str | Secret | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Harvest the UTC day of a daily partition key; see :func:`harvest_interval`.

    Every window of the day is harvested, whatever ``--window`` is, as long as it
    divides the day; a longer window is a :class:`ConfigError`.
    """
    span = day_span(key)
    window = resolve_window(config_path, **options)
    if window > DAY:
        raise ConfigError(
            f"--window {format_duration(window)} is longer than a day, so it cannot "
            "belong to one daily partition; use a window that divides a day (1d, 6h, 1h, 15m)"
        )
    return harvest_interval(
        span.after, span.before, config_path, api_key=api_key, env=env, **options
    )


def _harvest_span(
    span: HarvestSpan,
    config_path: PathLike | None,
    *,
    api_key: str | Secret | None,
    env: Mapping[str, str] | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Run the harvest of a span; nothing runs (and nothing is written) when it is empty."""
    if span.empty:
        return {**span.to_json(), "harvested": False, "metadata": None, "result": None}
    config = api.make_config(
        config_path, env=env, **options, after=span.after, before=span.before, since_last=False
    )
    result = api.harvest(config, api_key=api_key or api.api_key_from_env(env))
    outcome = {
        **span.to_json(),
        "harvested": True,
        "metadata": run_metadata(result),
        "result": result.to_json(),
    }
    if not result.ok:
        raise IncompleteHarvest(_incomplete_message(span, result), outcome=outcome)
    return outcome


def _incomplete_message(span: HarvestSpan, result: RunResult) -> str:
    """One line naming the first failed windows and what to do."""
    named = [f"{f.feed} {f.window} {f.error}" for f in result.failures[:FAILURES_SHOWN]]
    more = len(result.failures) - len(named)
    listed = "; ".join(named) + (f"; and {more} more" if more > 0 else "")
    if result.failures:
        what = f"{len(result.failures)} window(s) failed"
    elif result.held:
        holders = ", ".join(result.held_by) or "another run"
        what = f"{result.held} window(s) left to the run holding their lease, {holders}"
    else:
        what = "stopped early"
    range_ = f"[{format_api(span.after)}, {format_api(span.before)})"
    detail = f" ({listed})" if listed else ""
    return (
        f"harvest of {range_} incomplete: {what}{detail}; run it again (retry the task) "
        "to finish them"
    )


def _numbers(summary: FeedSummary) -> dict[str, int | float]:
    """A feed's totals as flat numbers, named for metadata."""
    return {
        "rows": summary.rows,
        "pages": summary.pages,
        "requests": summary.counters.requests,
        "retries": summary.counters.retries,
        "throttled_429": summary.counters.throttled,
        "bytes": summary.counters.bytes,
        "windows": summary.windows,
        "windows_done": summary.done,
        "windows_skipped": summary.skipped,
        "windows_failed": summary.failed,
    }


def run_metadata(result: RunResult) -> dict[str, Any]:
    """The numbers to attach to an orchestrator's run: totals, then per feed. JSON-able.

    Totals (``rows``, ``pages``, ``requests``, ``retries``, ``throttled_429``,
    ``bytes``, ``windows``, ``windows_done``, ``windows_skipped``, ``windows_failed``)
    are flat numbers, as Dagster plots them; ``feeds`` holds the same per feed, with
    ``seconds``. ``run_id`` names the run report under ``{out}/_runs/``.
    """
    per_feed = {feed: _numbers(s) for feed, s in result.feeds.items()}
    totals: dict[str, int | float] = dict.fromkeys(_numbers(FeedSummary()), 0)
    for numbers in per_feed.values():
        for name, value in numbers.items():
            totals[name] += value
    return {
        "run_id": result.run_id,
        "ok": result.ok,
        **totals,
        "seconds": round(result.seconds, 3),
        "feeds": {
            feed: {**numbers, "seconds": round(result.feeds[feed].seconds, 3)}
            for feed, numbers in per_feed.items()
        },
    }


def retryable(error: HarvesterError) -> bool:
    """Whether retrying the task can help: not for bad input, a refused key or the lake.

    Failed windows (:class:`IncompleteHarvest`), an unreachable API and transient
    storage errors are worth a retry; a :class:`ConfigError`, an :class:`AuthError`
    and a :class:`StorageError` (no access, a full disk, a damaged manifest) fail the
    same way again, so the task should fail at once. These are the exit codes the
    Kubernetes and AWS Batch manifests treat as final.
    """
    if isinstance(error, TransientStorageError):
        return True
    return not isinstance(error, ConfigError | AuthError | StorageError)


def choose_api_key(
    connection: Callable[[], str | None],
    *,
    env: Mapping[str, str] | None = None,
    source: str = "the orchestrator's connection",
) -> Secret:
    """The API key, as a :class:`Secret`: ``THREATGRID_API_KEY`` in ``env``, else ``connection()``.

    ``connection`` reads the orchestrator's secret store (an Airflow Connection's
    password); it is called only when the environment has no key. Neither giving a
    key is a :class:`ConfigError` naming both places.
    """
    value = (os.environ if env is None else env).get(API_KEY_ENV, "").strip()
    if not value:
        value = (connection() or "").strip()
    if not value:
        raise ConfigError(
            f"no Threat Grid API key: {API_KEY_ENV} is not set and {source} has no "
            "password; set one of them"
        )
    return Secret(value)
