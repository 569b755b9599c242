"""The harvester's one exception tree.

Every error the harvester raises on purpose is a :class:`HarvesterError`. Errors from
aiohttp, botocore and the file system are mapped onto this tree at the boundary where
they happen (``raise ... from exc``), so the rest of the code, and the CLI, deal with
our types only. Each message says what happened and what was expected, and never
contains the API key.

    HarvesterError
    ├── ConfigError              bad input: flags, TOML, environment          exit 2
    ├── ApiError                 the Threat Grid API said no, or said nonsense
    │   ├── AuthError            401/403: the key is missing or refused       exit 3
    │   ├── RequestRejected      400 and other non-retryable 4xx
    │   ├── PagingError          the server repeated a page or ignored offset
    │   │   └── Shifted          records moved while paging (the query starts again)
    │   ├── PageTooLarge         a body over --max-page-bytes (asked again, smaller)
    │   └── TransientError       worth retrying (see retry.py)
    │       ├── RateLimited      429, with the server's Retry-After if any
    │       ├── ServerError      408 and 5xx
    │       ├── ConnectionFailed no response at all: refused, reset, DNS, a
    │       │                    timeout before the response began
    │       ├── ReadTimeout      the response began, its body did not finish in time
    │       └── BadResponse      truncated body, non-JSON, wrong envelope
    ├── ApiUnreachable           the base URL never answered                  exit 5
    ├── DataError                a record that cannot be placed in the lake
    ├── IncompleteHarvest        windows failed: an orchestrator's task retries  exit 1
    └── StorageError             the lake could not be read or written        exit 4
        ├── StorageAccessError   denied, no bucket, bad credentials: the run stops
        ├── StorageFull          a disk is full (the lake, or the local staging
        │                        folder of an S3 run): the run stops
        ├── TransientStorageError  S3 5xx, SlowDown, reset: retried
        ├── Conflict             a conditional write or delete lost a race: the
        │                        caller re-reads and retries; never fatal
        └── CatalogError         a table catalog (Glue, an Iceberg catalog) said no
            └── CommitConflict   concurrent Iceberg writers kept winning   exit 1

Which errors stop a whole run and which fail only the window they happen in is decided
in one place, :data:`FATAL`. Anything that is not a :class:`HarvesterError` is a bug: it
is never caught per window, and the CLI turns it into exit 70.
"""

from __future__ import annotations

import asyncio
from typing import Any


class HarvesterError(Exception):
    """Base of every error the harvester raises on purpose."""

    exit_code = 1


class ConfigError(HarvesterError):
    """Bad input: a flag, a config file or the environment is wrong."""

    exit_code = 2


class ApiError(HarvesterError):
    """The Threat Grid API refused a request or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ApiError):
    """The API refused the key (401/403); the whole run stops."""

    exit_code = 3


class RequestRejected(ApiError):
    """The API rejected the request as malformed (400 and other 4xx); not retried."""


class PagingError(ApiError):
    """Paging went wrong: the server repeated a page or ignored the offset."""


class Shifted(PagingError):
    """Records were added or removed while a query was paged: start the query again."""


class PageTooLarge(ApiError):
    """A response body grew past ``--max-page-bytes``; the page is asked for again smaller."""


class TransientError(ApiError):
    """A failure that may pass: retried with backoff within the retry policy."""


class RateLimited(TransientError):
    """429 Too Many Requests; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class ServerError(TransientError):
    """408 or 5xx from the API."""


class ConnectionFailed(TransientError):
    """The connection failed or timed out before a full response arrived."""


class ReadTimeout(TransientError):
    """The server answered, but the body did not arrive within the request timeout."""


class BadResponse(TransientError):
    """The body was truncated, not JSON, or not the documented envelope."""


class ApiUnreachable(HarvesterError):
    """The base URL did not answer at all, even after retries."""

    exit_code = 5


class DataError(HarvesterError):
    """A record from the API cannot be placed in the lake (e.g. no timestamp)."""


class IncompleteHarvest(HarvesterError):
    """A harvest ended with windows that failed after their retries (or was stopped).

    The CLI reports this as exit 1 without raising; :mod:`harvester.integrations`
    raises it so that an orchestrator's task fails and is retried, which finishes the
    missing windows. ``outcome`` is the run's JSON-able outcome, as the task would
    have returned it.
    """

    def __init__(self, message: str, *, outcome: dict[str, Any]) -> None:
        super().__init__(message)
        self.outcome = outcome


class StorageError(HarvesterError):
    """The lake (local disk or S3) could not be read or written."""

    exit_code = 4


class StorageAccessError(StorageError):
    """Access denied, missing bucket or bad credentials: the run stops."""


class StorageFull(StorageError):
    """No space left on a disk the run writes to; nothing more can be written."""


class TransientStorageError(StorageError):
    """An S3 hiccup (5xx, SlowDown, reset) that is retried."""


class Conflict(StorageError):
    """A conditional write or delete lost a race: the object is not the version expected.

    The caller re-reads and retries; never fatal, never retried by the store (a retry
    with the same expectation would fail the same way).
    """


class CatalogError(StorageError):
    """A table catalog refused or failed a call: Glue, or an Iceberg lake's catalog.

    That is AWS Glue for ``harvester catalog``, or the SQL, Glue or REST catalog of an
    Iceberg lake.

    Denied access, missing or refused credentials, a database that does not exist (with
    ``--no-create-database``), an unreachable endpoint: the lake's tables cannot be
    registered or changed, which is the lake not being writable, hence exit 4.
    """


class CommitConflict(CatalogError):
    """An Iceberg commit conflicted with concurrent writers on every attempt.

    Nothing was committed; running the same command again redoes the windows.
    """

    exit_code = 1


FATAL: tuple[type[HarvesterError], ...] = (
    AuthError,
    StorageAccessError,
    StorageFull,
)
"""Errors that stop the whole run at once: no other window could succeed either."""


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a TaskGroup's exception group stands for.

    A bug (not a :class:`HarvesterError`) first, so it is never hidden behind the
    cancellations it caused; then a :data:`FATAL` error; then the first one.
    """
    errors: list[BaseException] = []
    pending = list(group.exceptions)
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            errors.append(error)
    bugs = [e for e in errors if not isinstance(e, HarvesterError | asyncio.CancelledError)]
    fatal = [e for e in errors if isinstance(e, FATAL)]
    return (bugs or fatal or errors)[0]
