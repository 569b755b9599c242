"""Which Iceberg catalog a lake uses, from ``--out`` and ``--catalog``.

The rules (issue 14):

* ``--catalog NAME`` is a catalog configured the way pyiceberg users already configure
  one: ``catalog.NAME`` in ``~/.pyiceberg.yaml`` (or ``$PYICEBERG_HOME``), or
  ``PYICEBERG_CATALOG__NAME__KEY`` environment variables. They are read when the
  catalog is opened, not when pyiceberg was imported.
* A URI works too: ``sqlite:///PATH`` or ``postgresql://HOST/DB`` for a SQL catalog,
  ``glue`` for AWS Glue (credentials, region and ``AWS_ENDPOINT_URL_GLUE`` from boto3's
  usual chain) and ``http(s)://HOST/...`` for a REST catalog. A URI carries no
  password (it would show in ``ps`` and shell history): Postgres reads ``PGPASSWORD``
  or ``~/.pgpass``, and a REST catalog with credentials is configured as a NAME.
* With no ``--catalog`` and a local ``--out``, a SQLite catalog at
  ``{out}/_catalog.db``. On S3 a catalog is required.

Every feed is the table ``{namespace}.{feed}`` at ``{out}/{feed}``. For an S3 lake the
catalog's file IO gets ``--s3-endpoint-url`` (or ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``) and the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
unless its configuration says otherwise: without a region pyiceberg asks AWS where the
bucket is. Files are always read and written through pyarrow's file systems
(``PyArrowFileIO``), which :mod:`.maintain` lists folders with.

REST and Postgres catalogs cannot be run offline here: :func:`catalog_spec`, the
plumbing that turns flags into pyiceberg properties, is what the tests check for them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from harvester.config import DEFAULTS, check_namespace
from harvester.errors import CatalogError, ConfigError
from harvester.iceberg import INSTALL_HINT, require_pyiceberg

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

DEFAULT_NAMESPACE: str = DEFAULTS["namespace"]
CATALOG_FILE = "_catalog.db"
URI_CATALOG_NAME = "harvester"
"""The name a catalog given as a URI gets; a SQL catalog keys its rows by this name."""
FILE_IO = "pyiceberg.io.pyarrow.PyArrowFileIO"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_SQL_SCHEMES = ("sqlite", "postgresql")
_HINT = (
    "use a NAME from ~/.pyiceberg.yaml, glue, sqlite:///PATH, postgresql://HOST/DB "
    "or an http(s):// REST catalog URL"
)

ConfigLookup = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True, kw_only=True)
class CatalogSpec:
    """How to open a catalog: its name and pyiceberg properties, and how to name it."""

    name: str
    properties: Mapping[str, str] = field(default_factory=dict)
    described: str
    """For messages and status: the NAME or URI, never a secret."""
    default_file: Path | None = None
    """The SQLite file of the default catalog of a local lake, if that is the one."""


@dataclass(frozen=True, kw_only=True)
class IcebergLake:
    """An open catalog, the namespace of the feed tables and the lake's root."""

    catalog: Catalog
    namespace: str
    root: str
    """``/abs/folder`` or ``s3://bucket/prefix``, without a trailing slash."""
    described: str

    def identifier(self, feed: str) -> tuple[str, str]:
        """The table identifier of ``feed``: ``(namespace, feed)``."""
        return (self.namespace, feed)

    def location(self, feed: str) -> str:
        """Where ``feed``'s data and metadata live: ``{out}/{feed}``."""
        return f"{self.root}/{feed}"


def lake_root(out: str) -> str:
    """``out`` as the tables' base location: an absolute folder or ``s3://bucket/prefix``."""
    if out.startswith("s3://"):
        bucket, _, prefix = out.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"--out {out!r} has no bucket name; use s3://bucket/prefix")
        prefix = prefix.strip("/")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    if "://" in out:
        raise ConfigError(
            f"--out {out!r} has an unknown scheme; use a folder or s3://bucket/prefix"
        )
    return Path(out).expanduser().absolute().as_posix().rstrip("/") or "/"


def pyiceberg_config(name: str) -> Mapping[str, Any] | None:
    """``catalog.NAME`` from ``~/.pyiceberg.yaml`` and ``PYICEBERG_CATALOG__NAME__*``, now."""
    from pyiceberg.utils.config import Config

    try:
        return Config().get_catalog_config(name)
    except ValueError as exc:  # a malformed file or variable
        raise ConfigError(
            f"--catalog {name}: the pyiceberg configuration is invalid: {exc}"
        ) from exc


def catalog_spec(
    out: str,
    catalog: str | None,
    *,
    s3_endpoint_url: str | None = None,
    env: Mapping[str, str] | None = None,
    lookup: ConfigLookup | None = None,
) -> CatalogSpec:
    """Turn ``--out`` and ``--catalog`` into the properties pyiceberg's ``load_catalog`` takes.

    ``env`` defaults to ``os.environ`` and ``lookup`` to :func:`pyiceberg_config`; both are
    parameters so the rules can be tested without pyiceberg's global state.
    """
    env = os.environ if env is None else env
    root = lake_root(out)
    on_s3 = root.startswith("s3://")
    io: dict[str, str] = {"py-io-impl": FILE_IO}
    if on_s3:
        endpoint = s3_endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if endpoint:
            io["s3.endpoint"] = endpoint
        if region:
            io["s3.region"] = region
    if catalog is None or not catalog.strip():
        if on_s3:
            raise ConfigError(f"--out {root} is on S3, so Iceberg tables need --catalog; {_HINT}")
        path = Path(root) / CATALOG_FILE
        return CatalogSpec(
            name=URI_CATALOG_NAME,
            properties={"type": "sql", "uri": f"sqlite:///{path}", **io},
            described=f"sqlite:///{path}",
            default_file=path,
        )
    catalog = catalog.strip()
    if catalog.lower() == "glue":
        if not on_s3:
            raise ConfigError(
                f"--catalog glue needs an s3:// --out, not {root}; Glue tables live on S3"
            )
        return CatalogSpec(
            name=URI_CATALOG_NAME, properties={"type": "glue", **io}, described="glue"
        )
    if "://" in catalog:
        parts = urlsplit(catalog)
        scheme = parts.scheme.lower()
        if parts.password:
            raise ConfigError(
                "--catalog must not carry a password (ps and shell history would show it); "
                "use PGPASSWORD or ~/.pgpass for Postgres, or a NAME in ~/.pyiceberg.yaml"
            )
        if scheme.split("+")[0] in _SQL_SCHEMES:
            if scheme.startswith("sqlite") and not parts.path.strip("/"):
                raise ConfigError(f"--catalog {catalog!r} names no file; use sqlite:///PATH")
            return CatalogSpec(
                name=URI_CATALOG_NAME,
                properties={"type": "sql", "uri": catalog, **io},
                described=catalog,
            )
        if scheme in ("http", "https"):
            if not parts.netloc:
                raise ConfigError(
                    f"--catalog {catalog!r} has no host; e.g. https://host/api/catalog"
                )
            return CatalogSpec(
                name=URI_CATALOG_NAME,
                properties={"type": "rest", "uri": catalog, **io},
                described=catalog,
            )
        raise ConfigError(f"--catalog {catalog!r} has an unknown scheme {scheme!r}; {_HINT}")
    if not _NAME.match(catalog):
        raise ConfigError(f"--catalog {catalog!r} is neither a catalog name nor a URI; {_HINT}")
    conf = (lookup or pyiceberg_config)(catalog)
    if conf is None:
        raise ConfigError(
            f"--catalog {catalog} is not configured: add catalog.{catalog.lower()} to "
            f"~/.pyiceberg.yaml or set PYICEBERG_CATALOG__{catalog.upper()}__URI "
            "(and __TYPE for glue)"
        )
    # The catalog's own settings win over what we would infer.
    properties = {**io, **{k: v for k, v in conf.items() if isinstance(v, str)}}
    return CatalogSpec(name=catalog, properties=properties, described=catalog)


def open_catalog(
    out: str,
    catalog: str | None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    s3_endpoint_url: str | None = None,
    create: bool = False,
) -> IcebergLake:
    """Open the catalog of the lake at ``out`` (see the module's rules).

    ``create`` allows making the default SQLite catalog (and ``out``) of a local lake;
    without it (``ddl``, ``maintain``, ``status``) a lake with no catalog file is a
    :class:`ConfigError`. Nothing is written to the catalog here: the namespace and the
    tables are made by :func:`harvester.iceberg.tables.ensure_table`.
    """
    require_pyiceberg()
    check_namespace(namespace)
    spec = catalog_spec(out, catalog, s3_endpoint_url=s3_endpoint_url)
    if spec.default_file is not None:
        if not create and not spec.default_file.is_file():
            raise ConfigError(
                f"there is no Iceberg catalog at {spec.default_file}; harvest with "
                "--table-format iceberg first, or pass the lake's --catalog"
            )
        try:
            spec.default_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(
                f"cannot create {spec.default_file.parent} ({exc.strerror or exc}); "
                "pick an --out you can write to"
            ) from exc
    return IcebergLake(
        catalog=load(spec),
        namespace=namespace,
        root=lake_root(out),
        described=spec.described,
    )


def load(spec: CatalogSpec) -> Catalog:
    """``load_catalog`` for ``spec``, its errors mapped to ours."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.exceptions import NoSuchPropertyException, NotInstalledError, RESTError
    from sqlalchemy.exc import SQLAlchemyError

    where = f"--catalog {spec.described}"
    try:
        return load_catalog(spec.name, **spec.properties)
    except (ValueError, NoSuchPropertyException) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (ImportError, NotInstalledError) as exc:
        driver = " (for postgresql: pip install psycopg2-binary)" if "postgres" in where else ""
        raise ConfigError(
            f"{where} needs a module that is not installed: {exc}{driver}; {INSTALL_HINT}"
        ) from exc
    except SQLAlchemyError as exc:
        raise CatalogError(f"cannot open the SQL catalog {spec.described}: {exc}") from exc
    except (OSError, RESTError) as exc:
        raise CatalogError(f"cannot reach the Iceberg catalog {spec.described}: {exc}") from exc
