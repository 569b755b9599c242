"""deploy/: the manifests parse and only use flags, variables and exit codes the code has."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.cli import _options, build_parser
from harvester.config import API_KEY_ENV, Shard, build_config, load_toml
from harvester.errors import AuthError, ConfigError, StorageError

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CODE = "\n".join(p.read_text() for p in sorted((ROOT / "harvester").rglob("*.py")))
# Read by boto3 (the AWS credential and region chain), not by harvester/ itself.
AWS_SDK_VARS = {"AWS_DEFAULT_REGION", "AWS_REGION"}
# Exit codes a retry cannot fix: bad config, refused key, inaccessible lake.
FINAL_EXIT_CODES = {ConfigError.exit_code, AuthError.exit_code, StorageError.exit_code}


def k8s_docs() -> dict[str, dict[str, Any]]:
    """The Kubernetes manifest's objects by kind."""
    docs = list(yaml.safe_load_all((DEPLOY / "k8s-indexed-job.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object per kind expected"
    return by_kind


def k8s_container() -> dict[str, Any]:
    """The harvester container of the Job."""
    (container,) = k8s_docs()["Job"]["spec"]["template"]["spec"]["containers"]
    return container


def batch_definition() -> dict[str, Any]:
    """The AWS Batch job definition."""
    return json.loads((DEPLOY / "aws-batch-job-definition.json").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def docker_entrypoint() -> list[str]:
    """The image's ENTRYPOINT, which must be in exec (JSON) form."""
    (entrypoint,) = [rest for ins, rest in dockerfile() if ins == "ENTRYPOINT"]
    value = json.loads(entrypoint)
    assert isinstance(value, list)
    return value


def k8s_argv() -> list[str]:
    """What the Job's container runs: command (else the image's entrypoint) plus args."""
    container = k8s_container()
    return [*container.get("command", docker_entrypoint()), *container.get("args", [])]


def batch_argv() -> list[str]:
    """What a Batch child runs: the image's entrypoint plus command, Ref:: defaults filled in.

    Batch's ``command`` replaces the image's CMD, not its ENTRYPOINT.
    """
    definition = batch_definition()
    defaults = definition.get("parameters", {})
    argv = []
    for arg in definition["containerProperties"]["command"]:
        for name in re.findall(r"Ref::(\w+)", arg):
            assert name in defaults, f"Ref::{name} has no default in parameters"
            arg = arg.replace(f"Ref::{name}", defaults[name])
        argv.append(arg)
    return [*docker_entrypoint(), *argv]


def shards_flag(argv: list[str]) -> int:
    """The value of --shards in ``argv``."""
    return int(argv[argv.index("--shards") + 1])


def config_for(argv: list[str], env: dict[str, str], tmp_path: Path) -> Any:
    """The HarvestConfig a container would build; the ConfigMap's job.toml as --config."""
    assert argv[0] == "harvester", argv
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    if args.config:
        assert args.config == "/config/job.toml"
        local = tmp_path / "job.toml"
        local.write_text(k8s_docs()["ConfigMap"]["data"]["job.toml"])
        args.config = str(local)
    return build_config(_options(args), env=env)


def test_k8s_manifest_is_an_indexed_job_with_one_pod_per_shard() -> None:
    """The k8s YAML parses; Indexed Job, completions = parallelism = --shards, retry per index."""
    docs = k8s_docs()
    job = docs["Job"]["spec"]
    shards = shards_flag(k8s_argv())
    assert job["completionMode"] == "Indexed"  # Kubernetes then sets JOB_COMPLETION_INDEX
    assert job["completions"] == job["parallelism"] == shards
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it
    assert job.get("backoffLimitPerIndex", 0) >= 1
    final = {
        code
        for rule in job["podFailurePolicy"]["rules"]
        if rule["action"] == "FailIndex"
        for code in rule["onExitCodes"]["values"]
    }
    assert final == FINAL_EXIT_CODES


def test_k8s_job_gets_config_key_and_aws_credentials_the_intended_way() -> None:
    """Config from the ConfigMap at /config, the key via secretKeyRef, S3 via IRSA."""
    docs = k8s_docs()
    pod = docs["Job"]["spec"]["template"]["spec"]
    container = k8s_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert mounts[config_volume] == "/config"
    assert volumes[config_volume]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert "job.toml" in docs["ConfigMap"]["data"]

    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env[API_KEY_ENV]["valueFrom"]
    assert "value" not in env[API_KEY_ENV], "the key must not be written into the manifest"

    account = docs["ServiceAccount"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::")
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_command_is_valid_and_builds_the_indexed_shard(tmp_path: Path) -> None:
    """The Job's argv parses with the real CLI; with the ConfigMap it runs shard INDEX/N."""
    argv = k8s_argv()
    shards = shards_flag(argv)
    job_toml = tmp_path / "check.toml"
    job_toml.write_text(k8s_docs()["ConfigMap"]["data"]["job.toml"])
    file_options = load_toml(str(job_toml))  # unknown keys or wrong types would raise
    for index in (0, shards - 1):
        config = config_for(argv, {"JOB_COMPLETION_INDEX": str(index)}, tmp_path)
        assert config.shard == Shard(index=index, count=shards)
        assert config.rate == pytest.approx(float(file_options["rate"]) / shards)
        # a fixed range: every shard, retried or not, plans the same units
        assert config.after is not None and not config.since_last
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        config_for(argv, {}, tmp_path)


def test_batch_definition_is_an_array_job_template_with_secret_and_role(tmp_path: Path) -> None:
    """The Batch JSON parses; key from Secrets Manager, a job role, per-child retries."""
    definition = batch_definition()
    assert definition["type"] == "container"
    props = definition["containerProperties"]
    assert "arrayProperties" not in definition, "the array size is given at submit time"
    (secret,) = [s for s in props["secrets"] if s["name"] == API_KEY_ENV]
    assert secret["valueFrom"].startswith("arn:aws:secretsmanager:")
    assert API_KEY_ENV not in {e["name"] for e in props.get("environment", [])}
    assert props["jobRoleArn"].startswith("arn:aws:iam::")
    retry = definition["retryStrategy"]
    assert retry["attempts"] >= 2
    final = {
        int(rule["onExitCode"]) for rule in retry["evaluateOnExit"] if rule["action"] == "EXIT"
    }
    assert final == FINAL_EXIT_CODES


def test_batch_command_is_valid_and_builds_the_array_shard(tmp_path: Path) -> None:
    """Entrypoint + Batch command parses with the real CLI and runs shard ARRAY_INDEX/N."""
    argv = batch_argv()
    shards = shards_flag(argv)
    for index in (0, shards - 1):
        config = config_for(argv, {"AWS_BATCH_JOB_ARRAY_INDEX": str(index)}, tmp_path)
        assert config.shard == Shard(index=index, count=shards)
        assert config.after is not None and not config.since_last
    with pytest.raises(ConfigError, match="is invalid"):
        config_for(argv, {"AWS_BATCH_JOB_ARRAY_INDEX": str(shards)}, tmp_path)


def test_readme_submits_the_batch_array_with_one_child_per_shard() -> None:
    """deploy/README.md's submit-job sets --array-properties size to the definition's --shards."""
    readme = (DEPLOY / "README.md").read_text()
    command = re.search(r"aws batch submit-job(?:[^\n]*\\\n)*[^\n]*", readme)
    assert command, "the README shows no submit-job command"
    words = shlex.split(command.group(0).replace("\\\n", " "))
    size = words[words.index("--array-properties") + 1]
    assert size == f"size={shards_flag(batch_argv())}"
    assert words[words.index("--job-definition") + 1] == batch_definition()["jobDefinitionName"]


def test_environment_variables_are_ones_the_code_reads() -> None:
    """Every variable the manifests set is read by harvester/ (or boto3); so are the indexes."""
    container = k8s_container()
    props = batch_definition()["containerProperties"]
    names = {e["name"] for e in container["env"]}
    names |= {e["name"] for e in props.get("environment", []) + props.get("secrets", [])}
    assert API_KEY_ENV in names
    for name in names - AWS_SDK_VARS:
        assert f'"{name}"' in CODE, f"{name} is set by a manifest but never read by harvester/"
    # injected by Kubernetes (Indexed Job) and AWS Batch (array child), read by the code
    for name in ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"):
        assert f'"{name}"' in CODE


def test_dockerfile_installs_the_package_with_the_harvester_entrypoint() -> None:
    """Dockerfile: python:3.11-slim, pip installs this package, ENTRYPOINT harvester, non-root."""
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    copied = [rest.split()[0] for ins, rest in steps if ins == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    assert "pyproject.toml" in copied and "harvester" in copied
    runs = " && ".join(rest for ins, rest in steps if ins == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs)
    assert docker_entrypoint() == ["harvester"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["harvester"] == "harvester.cli:main"
    (user,) = [rest for ins, rest in steps if ins == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (for runAsNonRoot)"
    pod = k8s_docs()["Job"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
