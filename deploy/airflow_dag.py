"""Airflow DAG ``threatgrid_harvest``: every night, the windows that ended during the last day.

Copy this file into the DAGs folder of an Airflow 2.4+ or 3.x deployment whose workers
have ``threatgrid-harvester`` installed. The logic lives in
:mod:`harvester.integrations` (tested without Airflow); this file only wires it to
Airflow:

* **Schedule.** A data-interval timetable at 02:15 UTC: the run for the interval
  ``[D-1 02:15, D 02:15)`` harvests the windows that *end* within it (with ``1d``
  windows, day D-1), two hours and a quarter after the day ended, so late records have
  had time to arrive. An explicit ``CronDataIntervalTimetable``, because in Airflow 3 a
  bare cron string gives runs whose data interval is a single instant.
* **Config.** The TOML file the CLI reads, at ``$THREATGRID_HARVEST_CONFIG`` (default
  ``/opt/airflow/config/threatgrid.toml``); its ``after``/``before`` are replaced by the
  run's interval and ``since_last`` is ignored.
* **Key.** ``THREATGRID_API_KEY`` in the worker's environment if it is set, else the
  password of the Airflow Connection ``threatgrid_default`` (so any secrets backend
  works). The key is never passed through XCom or a template.
* **Retries.** Failed windows raise ``IncompleteHarvest``: the task is retried and the
  next attempt harvests only what is missing. Bad config, a refused key or an
  unwritable lake fail the task at once (``AirflowFailException``), since a retry would
  fail the same way.
* **Results.** The task returns the JSON outcome (span, per-feed rows, pages, requests,
  429s, the run report's id) as its XCom ``return_value``.

``catchup=True`` with ``max_active_runs=1``: every interval since ``START`` runs, one at
a time (runs in parallel would each use the whole ``rate``). Intervals whose windows the
lake already holds cost no API request, so a start date before a CLI backfill is cheap.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import pendulum

from harvester.errors import HarvesterError
from harvester.integrations import choose_api_key, harvest_interval, retryable

try:  # Airflow 3: the Task SDK
    from airflow.sdk import BaseHook, dag, task
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2 (and 3.0, where these paths still work)
    from airflow.decorators import dag, task
    from airflow.exceptions import AirflowFailException
    from airflow.hooks.base import BaseHook
try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:
    from airflow.timetables.interval import CronDataIntervalTimetable

CONFIG = os.environ.get("THREATGRID_HARVEST_CONFIG", "/opt/airflow/config/threatgrid.toml")
CONN_ID = "threatgrid_default"
START = pendulum.datetime(2024, 1, 1, 2, 15, tz="UTC")


def connection_password() -> str | None:
    """The password of the Connection ``threatgrid_default`` (the Threat Grid API key)."""
    password: str | None = BaseHook.get_connection(CONN_ID).password
    return password


@dag(
    dag_id="threatgrid_harvest",
    schedule=CronDataIntervalTimetable("15 2 * * *", timezone=pendulum.timezone("UTC")),
    start_date=START,
    catchup=True,
    max_active_runs=1,
    default_args={
        "retries": 4,
        "retry_delay": timedelta(minutes=10),
        "retry_exponential_backoff": True,
    },
    tags=["threatgrid"],
)
def threatgrid_harvest() -> None:
    """Harvest Threat Grid's IOC feeds for each data interval (see the module doc)."""

    @task
    def harvest(
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
    ) -> dict[str, Any]:
        """Harvest the interval's windows; the JSON outcome goes to XCom."""
        try:
            key = choose_api_key(connection_password, source=f"the Connection {CONN_ID!r}")
            return harvest_interval(data_interval_start, data_interval_end, CONFIG, api_key=key)
        except HarvesterError as exc:
            if retryable(exc):
                raise  # failed windows, an unreachable API: the next try finishes them
            raise AirflowFailException(str(exc)) from exc

    harvest()


threatgrid_harvest()
