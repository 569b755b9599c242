"""Dagster definitions: the lake as an asset with one partition per UTC day.

Load with ``dagster dev -f deploy/dagster_assets.py`` (Dagster 1.10+, with
``threatgrid-harvester`` installed in the code location's environment). The logic lives
in :mod:`harvester.integrations` (tested without Dagster); this file only wires it:

* **Partitions.** Daily, UTC, from ``START_DATE``: partition ``2024-01-15`` harvests
  ``[2024-01-15T00:00:00Z, 2024-01-16T00:00:00Z)``, every window of that day whatever
  ``--window`` is (a window longer than a day is refused). The newest partition is
  yesterday, a complete day; the schedule materialises it every night at 02:15 UTC.
* **Config and key.** The resource ``threatgrid`` reads the TOML path from
  ``THREATGRID_HARVEST_CONFIG`` and the key from ``THREATGRID_API_KEY`` through
  ``EnvVar``, so neither value is stored in the definitions or shown in the UI.
* **Metadata.** Each materialisation carries the run's totals (rows, pages, requests,
  retries, 429s, windows done, skipped and failed, seconds), per feed as JSON, and the
  run report's id.
* **Retries.** Failed windows raise ``IncompleteHarvest`` and the ``RetryPolicy``
  retries the step, which harvests only what is missing; bad config, a refused key or
  an unwritable lake fail at once (``Failure(allow_retries=False)``).
* **Concurrency.** A backfill runs many partitions; each would use the whole ``rate``.
  The asset is in the pool ``threatgrid_api``: set its limit to 1
  (``dagster instance concurrency set threatgrid_api 1``, or in the UI).
"""

# No ``from __future__ import annotations``: Dagster reads the annotations of the asset's
# parameters (the context and the resource) at definition time, as real types.
from typing import Any

import dagster as dg

from harvester.errors import HarvesterError
from harvester.integrations import harvest_day, retryable

START_DATE = "2024-01-01"

daily = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")


class ThreatGridHarvester(dg.ConfigurableResource):
    """Where a harvest's configuration and API key come from."""

    config_path: str
    """The TOML file the CLI reads (``out``, ``feeds``, scores, ``window``, ``rate``...)."""
    api_key: str
    """The Threat Grid API key; give it as ``EnvVar``, never as a literal."""


@dg.asset(
    partitions_def=daily,
    retry_policy=dg.RetryPolicy(max_retries=4, delay=600, backoff=dg.Backoff.EXPONENTIAL),
    pool="threatgrid_api",
    group_name="threatgrid",
)
def threatgrid_iocs(
    context: dg.AssetExecutionContext, threatgrid: ThreatGridHarvester
) -> dg.MaterializeResult:
    """Threat Grid's IOC feeds for one UTC day, in the Parquet lake the config names."""
    try:
        outcome = harvest_day(
            context.partition_key, threatgrid.config_path, api_key=threatgrid.api_key
        )
    except HarvesterError as exc:
        if retryable(exc):
            raise  # failed windows, an unreachable API: the retry finishes them
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    metadata: dict[str, Any] = dict(outcome["metadata"] or {})
    feeds = metadata.pop("feeds", {})
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "after": outcome["after"],
            "before": outcome["before"],
            "feeds": dg.MetadataValue.json(feeds),
        }
    )


nightly = dg.build_schedule_from_partitioned_job(
    dg.define_asset_job("threatgrid_nightly", selection=[threatgrid_iocs]),
    hour_of_day=2,
    minute_of_hour=15,
)

defs = dg.Definitions(
    assets=[threatgrid_iocs],
    schedules=[nightly],
    resources={
        "threatgrid": ThreatGridHarvester(
            config_path=dg.EnvVar("THREATGRID_HARVEST_CONFIG"),
            api_key=dg.EnvVar("THREATGRID_API_KEY"),
        )
    },
)
