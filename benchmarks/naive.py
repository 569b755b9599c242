"""The naive baseline: a sequential ``requests`` + ``pandas`` script, as one would first write it.

For every feed and every day it pages through the day with ``limit``/``offset`` (and
the scenario's filters, every score by default)
(advancing by what came back, stopping on a page shorter than ``items_per_page``), keeps
the items in a list, then writes ``pd.DataFrame(items).to_parquet(..., compression="zstd")``
per (feed, day). One request at a time; a 429 is waited out (``Retry-After``) and
repeated, anything else non-200 raises. Needs ``requests`` and ``pandas``
(``pip install '.[bench]'``).
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

FEED_PATH = "/api/v2/iocs/feeds/{feed}"


def _days(after: str, before: str) -> list[date]:
    first, end = date.fromisoformat(after[:10]), date.fromisoformat(before[:10])
    return [first + timedelta(days=i) for i in range((end - first).days)]


def _api(day: date) -> str:
    return datetime(day.year, day.month, day.day).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Harvest ``job["feeds"]`` over the days ``[after, before)`` into ``job["out"]``."""
    import pandas as pd
    import requests

    started = time.perf_counter()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {job['key']}"
    out = Path(job["out"])
    rows = requests_made = throttled = 0
    filters = job.get("params", {"confidence": "0", "severity": "0"})
    for feed in job["feeds"]:
        url = job["url"].rstrip("/") + FEED_PATH.format(feed=feed)
        for day in _days(job["after"], job["before"]):
            items: list[dict[str, Any]] = []
            offset = 0
            while True:
                query = {
                    "after": _api(day),
                    "before": _api(day + timedelta(days=1)),
                    **filters,
                    "limit": job["limit"],
                    "offset": offset,
                }
                response = session.get(url, params=query, timeout=120)
                requests_made += 1
                if response.status_code == 429:
                    throttled += 1
                    time.sleep(float(response.headers.get("Retry-After") or 1))
                    continue
                response.raise_for_status()
                data = response.json()["data"]
                items.extend(data["items"])
                offset += len(data["items"])
                if len(data["items"]) < data["items_per_page"]:
                    break
            if items:
                folder = out / feed / f"dt={day.isoformat()}"
                folder.mkdir(parents=True, exist_ok=True)
                frame = pd.DataFrame(items)
                frame.to_parquet(folder / "part.parquet", compression="zstd", index=False)
                rows += len(frame)
    session.close()
    return {
        "rows": rows,
        "client_requests": requests_made,
        "client_throttled": throttled,
        "seconds": time.perf_counter() - started,
    }
