"""Request counters: what the API client counts, and what summaries and reports show.

A data type on its own, below both the client that increments it and the run result
that holds it, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class Counters:
    """Requests to the API for one feed, counted as they happen."""

    requests: int = 0
    """Every request sent, retries and the preflight included."""
    retries: int = 0
    """Requests that were a retry of a failed one."""
    throttled: int = 0
    """Requests answered 429."""
    bytes: int = 0
    """Response body bytes received."""
