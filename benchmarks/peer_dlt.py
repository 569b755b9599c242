"""The peer: the same harvest with dlt's ``rest_api`` source into Parquet on local disk.

Configured as dlt documents it (``dlt.sources.rest_api.rest_api_source``): one resource
per feed over the whole range (``after``/``before``, every score or the scenario's
filters), bearer auth, ``data.items`` as the data selector and dlt's ``offset``
paginator (``limit`` = the server's page size, no total: it stops on a short or empty
page). The pipeline uses the ``filesystem``
destination on a ``file://`` folder with ``loader_file_format="parquet"`` and zstd
compression. Everything else is dlt's default (sequential extract, one normalize
worker). Telemetry is off and all of dlt's state lives in the job's folder. Needs
``dlt[parquet]`` (``pip install '.[bench]'``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

FEED_PATH = "api/v2/iocs/feeds/{feed}"


def configure_environment(root: Path) -> None:
    """Keep dlt offline and inside ``root``; write zstd Parquet. Call before importing dlt."""
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    os.environ["DLT_DATA_DIR"] = str(root / "dlt-data")
    os.environ["DLT_PROJECT_DIR"] = str(root / "dlt-project")
    os.environ["NORMALIZE__DATA_WRITER__COMPRESSION"] = "zstd"
    os.environ["DATA_WRITER__COMPRESSION"] = "zstd"
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run a dlt pipeline over ``job["feeds"]`` and ``[after, before)`` into ``job["out"]``."""
    root = Path(job["out"])
    root.mkdir(parents=True, exist_ok=True)
    configure_environment(root)
    started = time.perf_counter()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    imported = time.perf_counter()
    source = rest_api_source(
        {
            "client": {
                "base_url": job["url"].rstrip("/") + "/",
                "auth": {"type": "bearer", "token": job["key"]},
                "paginator": {
                    "type": "offset",
                    "limit": int(job["limit"]),
                    "offset_param": "offset",
                    "limit_param": "limit",
                    "total_path": None,
                },
            },
            "resource_defaults": {
                "write_disposition": "append",
                "endpoint": {"data_selector": "data.items"},
            },
            "resources": [
                {
                    "name": feed,
                    "endpoint": {
                        "path": FEED_PATH.format(feed=feed),
                        "params": {
                            "after": job["after_api"],
                            "before": job["before_api"],
                            **job.get("params", {"confidence": "0", "severity": "0"}),
                        },
                    },
                }
                for feed in job["feeds"]
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="tg_bench",
        destination=dlt.destinations.filesystem(bucket_url=(root / "lake").as_uri()),
        dataset_name="threatgrid",
        pipelines_dir=str(root / "pipelines"),
    )
    pipeline.run(source, loader_file_format="parquet")
    finished = time.perf_counter()
    counts = pipeline.last_trace.last_normalize_info.row_counts
    rows = sum(counts.get(feed, 0) for feed in job["feeds"])
    return {
        "rows": rows,
        "seconds": finished - imported,
        "import_seconds": imported - started,
        "tables": {k: v for k, v in counts.items() if not k.startswith("_dlt")},
    }
