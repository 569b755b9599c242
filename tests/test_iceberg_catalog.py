"""Which catalog ``--out`` and ``--catalog`` open, and the plumbing for REST/Postgres/Glue.

REST and Postgres catalogs cannot run offline here: their properties are checked as
data (what pyiceberg's ``load_catalog`` is given), and the real errors a user meets
without a server or a driver are checked end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harvester.config import build_config
from harvester.errors import CatalogError, ConfigError
from harvester.iceberg.catalog import (
    CATALOG_FILE,
    URI_CATALOG_NAME,
    catalog_spec,
    open_catalog,
)
from harvester.iceberg.tables import ensure_table, iceberg_schema, load_table

IO = "pyiceberg.io.pyarrow.PyArrowFileIO"


def test_local_lake_defaults_to_sqlite_beside_the_data(tmp_path: Path) -> None:
    spec = catalog_spec(str(tmp_path / "lake"), None, env={})
    path = tmp_path / "lake" / CATALOG_FILE
    assert spec.default_file == path
    assert dict(spec.properties) == {"type": "sql", "uri": f"sqlite:///{path}", "py-io-impl": IO}
    assert spec.name == URI_CATALOG_NAME


@pytest.mark.parametrize(
    ("catalog", "properties"),
    [
        ("sqlite:////var/lib/tg/catalog.db", {"type": "sql", "uri": "sqlite:////var/lib/tg/catalog.db"}),
        ("postgresql://db.internal:5432/iceberg", {"type": "sql", "uri": "postgresql://db.internal:5432/iceberg"}),
        ("postgresql+psycopg2://user@db/ice", {"type": "sql", "uri": "postgresql+psycopg2://user@db/ice"}),
        ("https://polaris.example.com/api/catalog", {"type": "rest", "uri": "https://polaris.example.com/api/catalog"}),
        ("glue", {"type": "glue"}),
        ("GLUE", {"type": "glue"}),
    ],
)  # fmt: skip
def test_uri_forms_become_pyiceberg_properties(catalog: str, properties: dict[str, str]) -> None:
    env = {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio:9000"}
    spec = catalog_spec("s3://bucket/tg", catalog, env=env)
    want = {**properties, "py-io-impl": IO, "s3.region": "eu-west-1"}
    want["s3.endpoint"] = "http://minio:9000"
    assert dict(spec.properties) == want
    assert spec.described in (catalog, "glue") and spec.name == URI_CATALOG_NAME


def test_s3_endpoint_flag_wins_over_the_environment() -> None:
    env = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
    assert catalog_spec("s3://b/p", "glue", env=env).properties["s3.endpoint"] == "http://b"
    spec = catalog_spec("s3://b/p", "glue", env=env, s3_endpoint_url="http://c")
    assert spec.properties["s3.endpoint"] == "http://c"
    assert "s3.endpoint" not in catalog_spec("s3://b/p", "glue", env={}).properties


def test_a_name_is_looked_up_and_its_own_settings_win() -> None:
    seen: list[str] = []

    def lookup(name: str) -> dict[str, str]:
        seen.append(name)
        return {"uri": "https://rest.example/api", "credential": "id:secret", "s3.region": "x"}

    spec = catalog_spec("s3://b/p", "prod", env={"AWS_REGION": "y"}, lookup=lookup)
    assert seen == ["prod"] and spec.name == "prod" and spec.described == "prod"
    assert spec.properties["s3.region"] == "x"  # the catalog's own, not the environment's
    assert spec.properties["credential"] == "id:secret"


@pytest.mark.parametrize(
    ("out", "catalog", "message"),
    [
        ("s3://bucket/tg", None, "is on S3, so Iceberg tables need --catalog"),
        ("s3://bucket/tg", "", "is on S3, so Iceberg tables need --catalog"),
        ("/tmp/lake", "glue", "glue needs an s3:// --out"),
        ("/tmp/lake", "postgresql://u:hunter2@db/ice", "must not carry a password"),
        ("/tmp/lake", "https://u:hunter2@rest/api", "must not carry a password"),
        ("/tmp/lake", "ftp://x/y", "unknown scheme 'ftp'"),
        ("/tmp/lake", "sqlite://", "names no file"),
        ("/tmp/lake", "http://", "has no host"),
        ("/tmp/lake", "not a name!", "neither a catalog name nor a URI"),
        ("/tmp/lake", "nowhere", "--catalog nowhere is not configured"),
        ("ftp://x/y", None, "unknown scheme"),
    ],
)
def test_bad_catalogs_are_one_line_config_errors(
    out: str, catalog: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        catalog_spec(out, catalog, env={}, lookup=lambda name: None)
    assert "hunter2" not in str(caught.value)


def test_named_catalog_from_the_environment_and_from_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lake"
    out.mkdir()
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path))
    monkeypatch.setenv("PYICEBERG_CATALOG__ENVCAT__URI", f"sqlite:///{tmp_path}/env.db")
    lake = open_catalog(str(out), "envcat")
    assert lake.described == "envcat"
    ensure_table(lake, "ips")
    assert (tmp_path / "env.db").is_file()

    (tmp_path / ".pyiceberg.yaml").write_text(
        f"catalog:\n  yamlcat:\n    uri: sqlite:///{tmp_path}/yaml.db\n"
    )
    lake = open_catalog(str(out), "yamlcat", namespace="other_ns")
    table = ensure_table(lake, "urls")
    assert table.name() == ("other_ns", "urls")
    assert table.location() == f"{out}/urls"
    assert (tmp_path / "yaml.db").is_file()


def test_read_only_commands_need_an_existing_catalog(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="there is no Iceberg catalog at"):
        open_catalog(str(tmp_path / "lake"), None)
    assert not (tmp_path / "lake").exists()  # nothing was created
    lake = open_catalog(str(tmp_path / "lake"), None, create=True)
    assert load_table(lake, "ips") is None
    ensure_table(lake, "ips")
    assert load_table(open_catalog(str(tmp_path / "lake"), None), "ips") is not None


def test_a_table_with_another_schema_is_refused(tmp_path: Path) -> None:
    lake = open_catalog(str(tmp_path / "lake"), None, create=True)
    lake.catalog.create_namespace("threatgrid")
    lake.catalog.create_table(
        ("threatgrid", "ips"), schema=iceberg_schema("urls"), location=lake.location("ips")
    )
    with pytest.raises(ConfigError, match=r"exists .* with another schema"):
        ensure_table(lake, "ips")


def test_postgres_without_a_driver_and_rest_without_a_server_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="psycopg2"):
        open_catalog(str(tmp_path), "postgresql://db.invalid/ice")
    with pytest.raises(
        CatalogError, match=r"cannot reach the Iceberg catalog http://127\.0\.0\.1:9/"
    ):
        open_catalog(str(tmp_path), "http://127.0.0.1:9/api")


def test_run_options_for_iceberg_are_validated() -> None:
    base = {"after": "2024-01-01", "before": "2024-01-02", "out": "/tmp/lake"}
    config = build_config({**base, "table_format": "iceberg", "namespace": "tg2"}, env={})
    assert (config.table_format, config.catalog, config.namespace) == ("iceberg", None, "tg2")
    assert config.describe()["table_format"] == "iceberg"
    assert build_config(base, env={}).describe()["table_format"] == "hive"
    for options, message in [
        ({"table_format": "delta"}, "--table-format 'delta' is unknown"),
        ({"catalog": "glue"}, "need --table-format iceberg"),
        ({"table_format": "iceberg", "namespace": "a-b"}, "--namespace 'a-b' is not a valid name"),
        ({"table_format": "iceberg", "out": "s3://b/p"}, "needs --catalog"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config({**base, **options}, env={})


def test_a_hive_install_never_imports_pyiceberg() -> None:
    code = (
        "import sys, harvester.cli, harvester.orchestrator, harvester.config, harvester.ddl; "
        "from harvester.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyiceberg', 'sqlalchemy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_ddl_texts_for_an_iceberg_lake(tmp_path: Path) -> None:
    from harvester.iceberg.ddl import iceberg_athena_ddl, iceberg_duckdb_ddl

    views = iceberg_duckdb_ddl("s3://bucket/tg/", catalog="https://rest.example/api")
    assert views.count("CREATE OR REPLACE VIEW") == 7
    scan = "iceberg_scan('s3://bucket/tg/ips', version_name_format => '%s%s.metadata.json')"
    assert scan in views
    assert "CREATE SECRET" in views and "ATTACH" in views
    local = iceberg_duckdb_ddl(str(tmp_path / "lake"))
    assert f"iceberg_scan('{tmp_path}/lake/urls'" in local and "ATTACH" not in local
    athena = iceberg_athena_ddl("s3://bucket/tg", catalog="prod")
    assert "cannot read" in athena and "--catalog glue" in athena
    glue = iceberg_athena_ddl("s3://bucket/tg", catalog="glue", namespace="TG")
    assert '"tg"."ips"' in glue and "nothing to run" in glue.lower()
    with pytest.raises(ConfigError, match="quote"):
        iceberg_duckdb_ddl("/tmp/it's")


def test_losing_the_race_to_create_the_namespace_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another shard creates the namespace between our check and our create (seen in CI).

    The SQL catalog then fails with a duplicate key (SQLAlchemy's IntegrityError), not
    NamespaceAlreadyExistsError. The check is made to miss once, as in that race.
    """
    lake = open_catalog(str(tmp_path / "lake"), None, create=True)
    lake.catalog.create_namespace("threatgrid")  # the other shard
    real = type(lake.catalog).namespace_exists
    calls: list[object] = []

    def missed_once(self: object, namespace: object) -> bool:
        calls.append(namespace)
        return len(calls) > 1 and real(self, namespace)  # type: ignore[arg-type]

    monkeypatch.setattr(type(lake.catalog), "namespace_exists", missed_once)
    table = ensure_table(lake, "ips")
    assert table.name() == ("threatgrid", "ips") and len(calls) >= 2
