"""``harvester catalog``: the lake's tables registered in the AWS Glue Data Catalog.

Each feed becomes one Glue table, rendered from the same :class:`~harvester.ddl.TableSpec`
as ``harvester ddl --engine athena``: the same columns and types, ``dt`` as the partition
key, the same location and partition-projection properties, Parquet's SerDe and formats,
``EXTERNAL_TABLE`` with ``EXTERNAL=TRUE`` and ``classification=parquet``. Athena then
queries the tables without a crawler and without DDL (partition projection is Athena's:
engines that read partitions from the catalog, such as Spark, see none).

Running it again is a no-op: each table is read first and only written when what Glue
holds differs from what it should hold (a new column in a feed, another ``--since``,
another location). The harvester owns the fields it sets and every ``projection.*``
parameter; other table parameters (added by Athena, Lake Formation or people) are left
as they are and kept when a table is updated. Tables are never deleted.

A missing database is created, unless ``create_database`` is false, when it is a
:class:`~harvester.errors.CatalogError`. Every botocore failure is mapped here to a
:class:`~harvester.errors.CatalogError` (exit 4) or, for a bad region, profile or
endpoint, a :class:`~harvester.errors.ConfigError` (exit 2).

boto3 is blocking and the command makes a handful of calls, so this module is
synchronous. Region, credentials and retries (``AWS_MAX_ATTEMPTS``) come from the
standard AWS chain; the endpoint from ``endpoint_url``, else ``AWS_ENDPOINT_URL_GLUE``
or ``AWS_ENDPOINT_URL`` (botocore reads those itself).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    InvalidRegionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from harvester.ddl import DEFAULT_SINCE, TableSpec, s3_root, table_specs, valid_database
from harvester.errors import CatalogError, ConfigError
from harvester.secret import redact

log = structlog.get_logger("harvester")

Action = Literal["created", "updated", "unchanged"]
# Everything `register` may call, for the one-line error that says what to grant.
PERMISSIONS = (
    "glue:GetDatabase",
    "glue:CreateDatabase",
    "glue:GetTable",
    "glue:CreateTable",
    "glue:UpdateTable",
)
OWNED_PREFIXES = ("projection.",)  # parameters the harvester owns even when it sets none

_DENIED = {"AccessDeniedException", "AccessDenied"}
_CREDENTIALS = {
    "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "IncompleteSignature", "MissingAuthenticationToken",
}  # fmt: skip
_CONNECTION = (EndpointConnectionError, BotoConnectionError, HTTPClientError)
_XML_ERROR = re.compile(r"<Code>([^<]+)</Code>\s*<Message>([^<]*)</Message>")


@dataclass(frozen=True, kw_only=True)
class TableOutcome:
    """What ``register`` did to one table."""

    name: str
    location: str
    action: Action

    def __post_init__(self) -> None:
        if self.action not in ("created", "updated", "unchanged"):
            raise ValueError(f"unknown action {self.action!r}")


@dataclass(frozen=True, kw_only=True)
class CatalogResult:
    """What ``register`` did: the database (``created`` or ``unchanged``) and each table."""

    database: str
    database_action: Action
    tables: tuple[TableOutcome, ...]

    def __post_init__(self) -> None:
        if self.database_action not in ("created", "unchanged"):
            raise ValueError(f"a database is created or unchanged, not {self.database_action!r}")

    def as_dict(self) -> dict[str, Any]:
        """The result as plain data, for ``--json``."""
        return {
            "database": self.database,
            "database_action": self.database_action,
            "tables": [
                {"table": t.name, "action": t.action, "location": t.location} for t in self.tables
            ],
        }


@dataclass(frozen=True, kw_only=True)
class TablePlan:
    """What to do with one table: its outcome and the ``TableInput`` to send, if any."""

    action: Action
    table_input: Mapping[str, Any] | None

    def __post_init__(self) -> None:
        if (self.action == "unchanged") != (self.table_input is None):
            raise ValueError("a table input is sent exactly when the table changes")


def table_input(spec: TableSpec) -> dict[str, Any]:
    """The Glue ``TableInput`` of ``spec``: what Athena's DDL for it creates in the catalog."""
    return {
        "Name": spec.name,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {
            "EXTERNAL": "TRUE",
            "classification": spec.format.classification,
            **spec.properties,
        },
        "PartitionKeys": [{"Name": c.name, "Type": c.type} for c in spec.partition_keys],
        "StorageDescriptor": {
            "Columns": [{"Name": c.name, "Type": c.type} for c in spec.columns],
            "Location": spec.location,
            "InputFormat": spec.format.input_format,
            "OutputFormat": spec.format.output_format,
            "SerdeInfo": {
                "SerializationLibrary": spec.format.serde,
                "Parameters": {"serialization.format": "1"},
            },
        },
    }


def plan_table(desired: Mapping[str, Any], held: Mapping[str, Any] | None) -> TablePlan:
    """Create, update or leave a table, given its ``desired`` input and Glue's ``held`` table.

    ``held`` is ``GetTable``'s ``Table`` (or ``None`` if there is none). Only the fields
    ``desired`` sets are compared, and the parameters the harvester owns (its own and
    every ``projection.*``); what Glue adds (times, versions, defaults) and others'
    parameters are not. An update keeps the others' parameters.
    """
    if held is None:
        return TablePlan(action="created", table_input=desired)
    ours = dict(desired.get("Parameters", {}))
    held_parameters = dict(held.get("Parameters") or {})
    theirs = {k: v for k, v in held_parameters.items() if not _owned(k, ours)}
    wanted = {**desired, "Parameters": {**theirs, **ours}}
    if held_parameters == wanted["Parameters"] and _project(held, desired) == desired:
        return TablePlan(action="unchanged", table_input=None)
    return TablePlan(action="updated", table_input=wanted)


def _owned(key: str, ours: Mapping[str, str]) -> bool:
    return key in ours or key.startswith(OWNED_PREFIXES)


def _project(held: Any, like: Any) -> Any:
    """The part of ``held`` shaped like ``like``: the same keys of dicts, element-wise in lists."""
    if isinstance(like, dict) and isinstance(held, dict):
        return {k: _project(held.get(k), v) for k, v in like.items()}
    if isinstance(like, list) and isinstance(held, list):
        keys: dict[str, Any] = {}
        for item in like:
            if isinstance(item, dict):
                keys |= item
        return [_project(h, keys) if keys else h for h in held]
    return held


def register(
    out: str,
    *,
    database: str,
    since: str = DEFAULT_SINCE,
    create_database: bool = True,
    endpoint_url: str | None = None,
    region_name: str | None = None,
) -> CatalogResult:
    """Create or update the lake's Glue tables in ``database``; return what was done.

    Input is checked before any call (:class:`~harvester.errors.ConfigError`); Glue's
    refusals are :class:`~harvester.errors.CatalogError`.
    """
    s3_root(out, reader="Athena (through Glue)")
    db = valid_database(database, flag="--glue-database")
    specs = table_specs(out, database=db, since=since)
    glue = _Glue(endpoint_url=endpoint_url, region_name=region_name)
    try:
        database_action = glue.ensure_database(db, create=create_database)
        log.info("catalog.database", database=db, action=database_action)
        outcomes = []
        for spec in specs:
            action = glue.sync_table(db, table_input(spec))
            log.info("catalog.table", database=db, table=spec.name, action=action)
            outcomes.append(TableOutcome(name=spec.name, location=spec.location, action=action))
    finally:
        glue.close()
    return CatalogResult(database=db, database_action=database_action, tables=tuple(outcomes))


class _Glue:
    """A Glue client whose calls raise harvester errors."""

    def __init__(self, *, endpoint_url: str | None, region_name: str | None) -> None:
        config = Config(retries={"mode": "standard"}, connect_timeout=10, read_timeout=60)
        try:
            # a private session: boto3's default session is shared and not thread-safe
            session = boto3.session.Session(region_name=region_name)
            region = session.region_name
        except ProfileNotFound as exc:
            raise ConfigError(f"{exc}; fix AWS_PROFILE or ~/.aws/config") from exc
        if not region:  # Glue signs every request with the region, whatever the endpoint
            raise ConfigError(
                "no AWS region is set for Glue; set AWS_REGION (or region in ~/.aws/config)"
            )
        try:
            self._client: Any = session.client("glue", endpoint_url=endpoint_url, config=config)
        except InvalidRegionError as exc:
            raise ConfigError(f"{exc}; set AWS_REGION to a region such as eu-west-1") from exc
        except ValueError as exc:  # botocore's "Invalid endpoint: ..."
            raise ConfigError(
                f"the Glue endpoint is not a URL ({exc}); fix --glue-endpoint-url or "
                "AWS_ENDPOINT_URL_GLUE, e.g. https://glue.eu-west-1.amazonaws.com"
            ) from exc
        except (PartialCredentialsError, CredentialRetrievalError) as exc:
            raise _error(exc, "connecting to Glue", "", "") from exc

    def ensure_database(self, name: str, *, create: bool) -> Action:
        """``unchanged`` if database ``name`` exists; else create it (or refuse)."""
        what = f"database {name!r}"
        held = self._call(
            "glue:GetDatabase",
            f"reading {what}",
            self._client.get_database,
            expected="EntityNotFoundException",
            Name=name,
        )
        if held is not None:
            return "unchanged"
        if not create:
            raise CatalogError(
                f"Glue {what} does not exist; create it, or drop --no-create-database"
            )
        created = self._call(
            "glue:CreateDatabase",
            f"creating {what}",
            self._client.create_database,
            expected="AlreadyExistsException",  # created meanwhile, e.g. by another shard
            DatabaseInput={"Name": name},
        )
        return "unchanged" if created is None else "created"

    def sync_table(self, database: str, desired: Mapping[str, Any]) -> Action:
        """Create table ``desired`` in ``database``, or update it when Glue's differs."""
        name = desired["Name"]
        held = self._table(database, name)
        if held is None:
            created = self._call(
                "glue:CreateTable",
                f"creating table {database}.{name}",
                self._client.create_table,
                expected="AlreadyExistsException",
                DatabaseName=database,
                TableInput=desired,
            )
            if created is not None:
                return "created"
            held = self._table(database, name)  # created meanwhile: compare with that one
            if held is None:
                raise CatalogError(
                    f"Glue table {database}.{name} was created and dropped by someone else "
                    "while this ran; run it again"
                )
        plan = plan_table(desired, held)
        if plan.table_input is not None:
            self._call(
                "glue:UpdateTable",
                f"updating table {database}.{name}",
                self._client.update_table,
                DatabaseName=database,
                TableInput=plan.table_input,
            )
        return plan.action

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _table(self, database: str, name: str) -> dict[str, Any] | None:
        reply = self._call(
            "glue:GetTable",
            f"reading table {database}.{name}",
            self._client.get_table,
            expected="EntityNotFoundException",
            DatabaseName=database,
            Name=name,
        )
        return None if reply is None else dict(reply["Table"])

    def _call(
        self,
        permission: str,
        doing: str,
        fn: Callable[..., Any],
        *,
        expected: str = "",
        **kwargs: Any,
    ) -> Any:
        """``fn(**kwargs)``'s reply, or ``None`` when Glue answers the ``expected`` error code.

        ``permission`` (the IAM action) and ``doing`` are for the error message.
        """
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if expected and _code_and_message(exc)[0] == expected:
                return None
            raise _error(exc, doing, permission, self._client.meta.endpoint_url) from exc
        except BotoCoreError as exc:
            raise _error(exc, doing, permission, self._client.meta.endpoint_url) from exc


def _error(exc: Exception, doing: str, permission: str, endpoint: str) -> CatalogError:
    """The one-line harvester error for a botocore failure while ``doing``."""
    if isinstance(exc, NoCredentialsError):
        return CatalogError(
            "no AWS credentials found for Glue; set AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, PartialCredentialsError | CredentialRetrievalError):
        return CatalogError(
            f"AWS credentials are incomplete or unreadable ({_one_line(str(exc))}); set "
            "AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, ClientError):
        code, message = _code_and_message(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _CREDENTIALS:
            return CatalogError(
                f"Glue refused the AWS credentials ({code}) {doing}; fix AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if code in _DENIED or (status == 403 and code.isdigit()):
            return CatalogError(
                f"Glue denied {permission} {doing} ({message}); the job needs "
                f"{', '.join(PERMISSIONS)} on the catalog, the database and its tables"
            )
        return CatalogError(f"Glue {code} {doing}: {message}")
    detail = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, _CONNECTION):
        return CatalogError(
            f"cannot reach Glue at {endpoint} {doing} ({detail}); check "
            "--glue-endpoint-url, AWS_ENDPOINT_URL_GLUE, AWS_REGION and the network"
        )
    return CatalogError(f"Glue failed {doing}: {detail}")


def _code_and_message(exc: ClientError) -> tuple[str, str]:
    """The error's code and message, also when the body was XML in a JSON protocol.

    botocore then reports the HTTP status as the code and the XML as the message
    (proxies and some emulators answer that way).
    """
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if code.isdigit() and (found := _XML_ERROR.search(message)):
        code, message = found[1], found[2]
    return code, _one_line(message) or code


def _one_line(text: str) -> str:
    return redact(" ".join(text.split()))
