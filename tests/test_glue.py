"""``harvester catalog``: Glue tables exactly as the Athena DDL, idempotent, errors by exit code.

Glue is moto's server mode (the session's S3 server serves Glue too), called over real
HTTP by the real command (``tests/cli.py``) or by :func:`harvester.glue.register`.
Denied calls come from moto's own IAM enforcement, switched on for one test at a time.
"""

from __future__ import annotations

import contextlib
import copy
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.ddl import render_ddl, table_specs
from harvester.errors import CatalogError, ConfigError
from harvester.glue import plan_table, register, table_input
from harvester.schemas import BIGINT, FEEDS, Feed
from harvester.sim.server import SimulatorThread

from cli import cli
from harvesting import harvest
from lakecheck import athena_tables
from s3_server import admin_client

# Written out here, not taken from harvester.ddl: what Athena's STORED AS PARQUET means.
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
# What Athena must declare for each Arrow type pyarrow reads back from a written file.
ATHENA_FOR_FILE_TYPE = {
    "timestamp[ms, tz=UTC]": "timestamp",
    "timestamp[s, tz=UTC]": "timestamp",
    "int32": "int",
    "int64": "bigint",
    "string": "string",
}
OUT = "s3://example-bucket/threatgrid"


@contextlib.contextmanager
def glue_client(endpoint_url: str) -> Iterator[Any]:
    """A boto3 Glue client for setting up and inspecting the server; closed on exit."""
    client = boto3.session.Session().client("glue", endpoint_url=endpoint_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def glue(s3_server: str) -> Iterator[Any]:
    with glue_client(s3_server) as client:
        yield client


@pytest.fixture
def database(glue: Any) -> Iterator[str]:
    """A fresh database name (not created); the database and its tables are dropped after."""
    name = f"tg_{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(glue.exceptions.EntityNotFoundException):
        glue.delete_database(Name=name)


def catalog(endpoint: str, database: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """``harvester catalog --json`` through the real CLI against ``endpoint``."""
    where = ["--out", OUT, "--glue-database", database, "--glue-endpoint-url", endpoint]
    return cli(
        ["catalog", *where, "--json", "--log-level", "warning", *args],
        key=None,
        env=env,
    )


def one_line_error(done: Any) -> str:
    """The error line of a failed command: exactly one line on stderr, nothing on stdout."""
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("harvester: error: ")
    assert "Traceback" not in done.stderr
    return str(done.stderr)


def held(glue: Any, database: str) -> dict[str, dict[str, Any]]:
    return {t["Name"]: t for t in glue.get_tables(DatabaseName=database)["TableList"]}


def test_catalog_registers_each_feed_exactly_as_the_athena_ddl(
    s3_server: str, glue: Any, database: str
) -> None:
    """Database created; per feed one table with the DDL's columns, dt, location and projection."""
    done = catalog(s3_server, database, "--since", "2020-06-01")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["database"] == database and report["database_action"] == "created"
    assert [(t["table"], t["action"]) for t in report["tables"]] == [
        (feed, "created") for feed in FEEDS
    ]
    ddl = athena_tables(render_ddl(OUT, engine="athena", database=database, since="2020-06-01"))
    assert glue.get_database(Name=database)["Database"]["Name"] == database
    tables = held(glue, database)
    assert sorted(tables) == sorted(FEEDS) == sorted(ddl)
    for feed, expected in ddl.items():
        table = glue.get_table(DatabaseName=database, Name=feed)["Table"]
        sd = table["StorageDescriptor"]
        assert table["TableType"] == "EXTERNAL_TABLE"
        assert table["PartitionKeys"] == [{"Name": "dt", "Type": "string"}]
        assert [(c["Name"], c["Type"]) for c in sd["Columns"]] == expected["columns"]
        assert sd["Location"] == expected["location"] == f"{OUT}/{feed}/"
        assert table["Parameters"] == {
            "EXTERNAL": "TRUE",
            "classification": "parquet",
            **expected["properties"],  # type: ignore[dict-item]
        }
        assert table["Parameters"]["projection.dt.range"] == "2020-06-01,NOW"
        assert table["Parameters"]["storage.location.template"] == f"{OUT}/{feed}/dt=${{dt}}/"
        assert sd["InputFormat"] == PARQUET_INPUT and sd["OutputFormat"] == PARQUET_OUTPUT
        assert sd["SerdeInfo"] == {
            "SerializationLibrary": PARQUET_SERDE,
            "Parameters": {"serialization.format": "1"},
        }


def test_a_second_run_changes_nothing(s3_server: str, glue: Any, database: str) -> None:
    """Running catalog again reports unchanged and writes nothing: no new version, no update."""
    assert catalog(s3_server, database).returncode == 0
    before = held(glue, database)
    again = catalog(s3_server, database)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["database_action"] == "unchanged"
    assert {t["action"] for t in report["tables"]} == {"unchanged"}
    after = held(glue, database)
    assert after == before
    for feed in FEEDS:
        assert after[feed]["VersionId"] == "1" and "UpdateTime" not in after[feed]
        versions = glue.get_table_versions(DatabaseName=database, TableName=feed)
        assert len(versions["TableVersions"]) == 1


def test_the_human_output_and_events_name_every_table(
    s3_server: str, glue: Any, database: str
) -> None:
    """Without --json: a line per table with its action, and one catalog.table event each."""
    args = ["catalog", "--out", OUT, "--glue-database", database]
    done = cli([*args, "--glue-endpoint-url", s3_server], key=None)
    assert done.returncode == 0, done.stderr
    assert f"Glue database {database}: created" in done.stdout
    for feed in FEEDS:
        assert any(
            line.split() == [feed, "created", f"{OUT}/{feed}/"] for line in done.stdout.splitlines()
        ), feed
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["table"], e["action"]) for e in events if e["event"] == "catalog.table"] == [
        (feed, "created") for feed in FEEDS
    ]


def test_a_column_added_to_a_feed_updates_only_that_table(
    s3_server: str, glue: Any, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed that gains a column (a newer harvester) updates its table, and only its table."""
    register(OUT, database=database, endpoint_url=s3_server)
    ips = FEEDS["ips"]
    grown = Feed(name="ips", own=(*ips.own, ("asn", BIGINT)), restrictions=ips.restrictions)
    monkeypatch.setitem(FEEDS, "ips", grown)
    result = register(OUT, database=database, endpoint_url=s3_server)
    assert {t.name: t.action for t in result.tables} == {
        feed: "updated" if feed == "ips" else "unchanged" for feed in FEEDS
    }
    table = glue.get_table(DatabaseName=database, Name="ips")["Table"]
    columns = [(c["Name"], c["Type"]) for c in table["StorageDescriptor"]["Columns"]]
    assert columns[-2:] == [("asn", "bigint"), ("extra", "string")]
    assert table["VersionId"] == "2"
    assert glue.get_table(DatabaseName=database, Name="urls")["Table"]["VersionId"] == "1"
    again = register(OUT, database=database, endpoint_url=s3_server)
    assert {t.action for t in again.tables} == {"unchanged"}


def test_an_update_keeps_others_parameters_and_drops_stale_projection(
    s3_server: str, glue: Any, database: str
) -> None:
    """Parameters others added survive; an old projection key is removed; --since is applied."""
    register(OUT, database=database, endpoint_url=s3_server)
    table = glue.get_table(DatabaseName=database, Name="domains")["Table"]
    tampered = {k: copy.deepcopy(table[k]) for k in ("Name", "TableType", "StorageDescriptor")}
    tampered["PartitionKeys"] = table["PartitionKeys"]
    tampered["Parameters"] = {
        **table["Parameters"],
        "comment": "owned by the data team",
        "projection.dt.digits": "4",  # projection is ours: a key we do not set is stale
    }
    glue.update_table(DatabaseName=database, TableInput=tampered)
    result = register(OUT, database=database, endpoint_url=s3_server)
    assert {t.name: t.action for t in result.tables} == {
        feed: "updated" if feed == "domains" else "unchanged" for feed in FEEDS
    }
    parameters = glue.get_table(DatabaseName=database, Name="domains")["Table"]["Parameters"]
    assert parameters["comment"] == "owned by the data team"
    assert "projection.dt.digits" not in parameters
    later = register(OUT, database=database, since="2019-01-01", endpoint_url=s3_server)
    assert {t.action for t in later.tables} == {"updated"}  # a new --since changes every table
    parameters = glue.get_table(DatabaseName=database, Name="domains")["Table"]["Parameters"]
    assert parameters["projection.dt.range"] == "2019-01-01,NOW"
    assert parameters["comment"] == "owned by the data team"
    again = register(OUT, database=database, since="2019-01-01", endpoint_url=s3_server)
    assert {t.action for t in again.tables} == {"unchanged"}


def test_glue_tables_find_the_harvested_files_with_their_types(
    sim: SimulatorThread, s3_bucket: tuple[str, str], glue: Any, database: str
) -> None:
    """Over a real S3 lake: each table's template names the folders of its files, types match."""
    endpoint, bucket = s3_bucket
    out = f"s3://{bucket}/tg"
    assert harvest(
        sim.url, out, s3_endpoint_url=endpoint, before="2024-01-02", confidence=0, severity=0
    ).ok
    register(out, database=database, endpoint_url=endpoint)
    with admin_client(endpoint) as s3:
        for feed in FEEDS:
            table = glue.get_table(DatabaseName=database, Name=feed)["Table"]
            location = table["StorageDescriptor"]["Location"]
            template = table["Parameters"]["storage.location.template"]
            prefix = location.removeprefix(f"s3://{bucket}/")
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            assert listed, f"no {feed} file under {location}"
            for item in listed:
                folder, name = item["Key"].rsplit("/", 1)
                dt = folder.rsplit("dt=", 1)[1]
                assert template.replace("${dt}", dt) == f"s3://{bucket}/{folder}/"
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                schema = pq.read_schema(pa.BufferReader(body))
                written = [(f.name, ATHENA_FOR_FILE_TYPE[str(f.type)]) for f in schema]
                columns = table["StorageDescriptor"]["Columns"]
                assert [(c["Name"], c["Type"]) for c in columns] == written, name


def test_a_missing_database_is_refused_with_no_create_database(
    s3_server: str, glue: Any, database: str
) -> None:
    """--no-create-database: exit 4, one line naming the database, nothing created."""
    done = catalog(s3_server, database, "--no-create-database")
    assert done.returncode == 4
    line = one_line_error(done)
    assert f"Glue database '{database}' does not exist" in line
    with pytest.raises(glue.exceptions.EntityNotFoundException):
        glue.get_database(Name=database)


def test_an_existing_database_is_used_as_it_is(s3_server: str, glue: Any, database: str) -> None:
    """With --no-create-database and the database there, the tables are created in it."""
    glue.create_database(DatabaseInput={"Name": database, "Description": "made by hand"})
    done = catalog(s3_server, database, "--no-create-database")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["database_action"] == "unchanged"
    assert glue.get_database(Name=database)["Database"]["Description"] == "made by hand"
    assert sorted(held(glue, database)) == sorted(FEEDS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "./lake", "--glue-database", "tg"], "is not on S3"),
        (["--out", "s3://", "--glue-database", "tg"], "has no bucket name"),
        (["--out", OUT, "--glue-database", "threat-grid"], "--glue-database 'threat-grid'"),
        (["--out", OUT, "--glue-database", "tg", "--since", "2024-02-30"], "is not a date"),
        (["--out", OUT, "--glue-database", "tg", "--glue-endpoint-url", "no url"], "not a URL"),
    ],
)
def test_bad_input_exits_2_in_one_line_before_any_call(
    s3_server: str, glue: Any, args: list[str], message: str
) -> None:
    """A local --out, a bad database name, date or endpoint: exit 2, one line, nothing created."""
    before = {d["Name"] for d in glue.get_databases()["DatabaseList"]}
    done = cli(["catalog", *args], key=None, env={"AWS_ENDPOINT_URL_GLUE": s3_server})
    assert done.returncode == 2
    assert message in one_line_error(done)
    assert {d["Name"] for d in glue.get_databases()["DatabaseList"]} == before


def test_no_region_is_a_config_error(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a region anywhere in the AWS chain, Glue cannot sign: ConfigError, no call."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="no AWS region is set for Glue; set AWS_REGION"):
        register(OUT, database="tg", endpoint_url=s3_server)


def test_no_credentials_exit_4(s3_server: str, database: str) -> None:
    """No credentials anywhere in the chain: exit 4, one line saying so."""
    done = catalog(s3_server, database, env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert done.returncode == 4
    assert "no AWS credentials found for Glue" in one_line_error(done)


def test_an_unreachable_endpoint_exits_4(s3_server: str) -> None:
    """Nothing listening at the endpoint: exit 4, one line naming it."""
    done = catalog("http://127.0.0.1:9", "tg", env={"AWS_MAX_ATTEMPTS": "1"})
    assert done.returncode == 4
    assert "cannot reach Glue at http://127.0.0.1:9" in one_line_error(done)


@contextlib.contextmanager
def iam_enforced(endpoint: str) -> Iterator[None]:
    """Moto checks every request against IAM inside the block (its reset-auth switch)."""

    def switch(count: str) -> None:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would not reach moto's data
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200

    switch("0")
    try:
        yield
    finally:
        switch("inf")


@pytest.fixture
def reader_keys(s3_server: str) -> Iterator[dict[str, str]]:
    """Keys of an IAM user that may read Glue but not write it (environment for the CLI)."""
    user = f"reader-{uuid.uuid4().hex[:8]}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["glue:GetDatabase", "glue:GetTable", "glue:CreateDatabase"],
                "Resource": "*",
            }
        ],
    }
    iam = boto3.session.Session().client("iam", endpoint_url=s3_server)
    try:
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        yield {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        iam.delete_user_policy(UserName=user, PolicyName="read")
        iam.delete_user(UserName=user)
    finally:
        iam.close()


def test_denied_create_table_exits_4_naming_the_permission(
    s3_server: str, glue: Any, database: str, reader_keys: dict[str, str]
) -> None:
    """A user without glue:CreateTable: exit 4, one line naming the action and the table."""
    with iam_enforced(s3_server):
        done = catalog(s3_server, database, env=reader_keys)
    assert done.returncode == 4
    line = one_line_error(done)
    assert f"Glue denied glue:CreateTable creating table {database}.ips" in line
    assert "is not authorized to perform: glue:CreateTable" in line  # Glue's own words
    assert "the job needs glue:GetDatabase, glue:CreateDatabase" in line
    assert glue.get_tables(DatabaseName=database)["TableList"] == []


def test_refused_credentials_exit_4(s3_server: str, database: str) -> None:
    """A key IAM does not know: exit 4, one line saying the credentials were refused."""
    unknown = {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000", "AWS_SECRET_ACCESS_KEY": "nope"}
    with iam_enforced(s3_server):
        done = catalog(s3_server, database, env=unknown)
    assert done.returncode == 4
    assert "Glue refused the AWS credentials (InvalidClientTokenId)" in one_line_error(done)


def test_botocore_errors_are_mapped_with_their_cause(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, a Glue failure is a CatalogError (exit 4) raised from botocore's error."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(CatalogError, match=r"cannot reach Glue at http://127\.0\.0\.1:9") as caught:
        register(OUT, database="tg", endpoint_url="http://127.0.0.1:9")
    assert caught.value.exit_code == 4
    assert isinstance(caught.value.__cause__, EndpointConnectionError)


# ---- planning, pure --------------------------------------------------------------------

OURS = st.sampled_from([*table_input(table_specs(OUT)[0])["Parameters"]])
FOREIGN = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("projection.")),
    st.text(max_size=12),
    max_size=4,
)
GLUE_EXTRAS = st.fixed_dictionaries(
    {
        "CreateTime": st.just("2024-01-01T00:00:00Z"),
        "VersionId": st.integers(1, 99).map(str),
        "CatalogId": st.just("123456789012"),
    }
)
SPECS = st.builds(
    lambda i, since: table_specs(OUT, since=since)[i],
    st.integers(0, len(FEEDS) - 1),
    st.dates().map(lambda d: d.isoformat()).filter(lambda d: len(d) == 10),
)


def stored(
    table_input: dict[str, Any], foreign: dict[str, str], extras: dict[str, Any]
) -> dict[str, Any]:
    """What GetTable returns for a table created from ``table_input`` and then touched."""
    table = copy.deepcopy(table_input)
    table["Parameters"] = {**foreign, **table["Parameters"]}
    table["StorageDescriptor"]["Compressed"] = False  # defaults Glue may add
    table["StorageDescriptor"]["Columns"][0]["Comment"] = "a comment"
    return {**table, **extras, "DatabaseName": "tg"}


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, foreign=FOREIGN, extras=GLUE_EXTRAS)
def test_a_table_as_glue_holds_it_is_unchanged(
    spec: Any, foreign: dict[str, str], extras: dict[str, Any]
) -> None:
    """Glue's own fields, defaults, comments and others' parameters never cause an update."""
    desired = table_input(spec)
    assert plan_table(desired, None).action == "created"
    plan = plan_table(desired, stored(desired, foreign, extras))
    assert plan.action == "unchanged" and plan.table_input is None


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, foreign=FOREIGN, extras=GLUE_EXTRAS, data=st.data())
def test_any_difference_in_what_we_own_is_updated_and_then_unchanged(
    spec: Any, foreign: dict[str, str], extras: dict[str, Any], data: st.DataObject
) -> None:
    """A changed column, location, format, partition key or parameter is updated; then stable."""
    desired = table_input(spec)
    table = stored(desired, foreign, extras)
    sd = table["StorageDescriptor"]
    change = data.draw(
        st.sampled_from(
            ["type", "drop", "location", "serde", "partition", "param", "missing", "stale"]
        )
    )
    if change == "type":
        sd["Columns"][-1]["Type"] = "int"
    elif change == "drop":
        sd["Columns"].pop(data.draw(st.integers(0, len(sd["Columns"]) - 1)))
    elif change == "location":
        sd["Location"] = "s3://elsewhere/"
    elif change == "serde":
        sd["SerdeInfo"]["SerializationLibrary"] = "org.openx.data.jsonserde.JsonSerDe"
    elif change == "partition":
        table["PartitionKeys"] = [{"Name": "dt", "Type": "date"}]
    elif change == "param":
        table["Parameters"][data.draw(OURS)] = "changed"
    elif change == "missing":
        del table["Parameters"][data.draw(OURS)]
    else:
        table["Parameters"]["projection.dt.digits"] = "4"
    plan = plan_table(desired, table)
    assert plan.action == "updated" and plan.table_input is not None
    sent = dict(plan.table_input)
    theirs = {k: v for k, v in foreign.items() if k not in desired["Parameters"]}
    assert {k: sent["Parameters"].get(k) for k in theirs} == theirs
    assert plan_table(desired, {**sent, **extras}).action == "unchanged"
