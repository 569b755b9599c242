"""Honest exits: a full disk, a bug in our own code, a body that times out, third-party logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harvester.sim.data import DatasetSpec
from harvester.sim.server import SimulatorThread

from cli import SIM_KEY, cli

RANGE = ["--after", "2024-01-01", "--before", "2024-01-21", "--confidence", "0", "--severity", "0"]


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("harvester: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, as a user's script or a scheduler would."""
    environ = {k: v for k, v in os.environ.items() if k != "THREATGRID_API_KEY"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        timeout=120,
        check=False,
    )


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs none /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


small_disk = pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="needs unshare and a private tmpfs mount (user namespaces)"
)


def on_small_disk(
    disk: Path, argv: list[str], *, size: str = "192k", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``harvester ARGV`` with a private tmpfs of ``size`` at ``disk``: a disk that fills."""
    disk.mkdir(parents=True, exist_ok=True)
    command = " ".join(
        [f"mount -t tmpfs -o size={size} none {disk} &&", "exec", sys.executable, "-m", "harvester"]
        + [f"'{a}'" for a in argv]
    )
    environ = {**os.environ, "THREATGRID_API_KEY": SIM_KEY, **(env or {})}
    return subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", command],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


@small_disk
def test_a_full_lake_disk_is_exit_4_naming_the_path(make_sim, tmp_path: Path) -> None:
    """No space left in the lake: exit 4 with the path named, not "windows failed, exit 1"."""
    server: SimulatorThread = make_sim(dataset=DatasetSpec(seed=3, rows_per_day=400))
    disk = tmp_path / "disk"
    result = on_small_disk(disk, ["run", *RANGE, "--out", f"{disk}/lake", "--base-url", server.url])
    assert result.returncode == 4, result.stderr
    line = error_line(result.stderr)
    assert "no space left writing" in line and str(disk) in line
    assert "window.failed" not in result.stderr


@small_disk
def test_a_full_staging_disk_of_an_s3_run_says_it_is_local(
    make_sim, s3_bucket: tuple[str, str], tmp_path: Path
) -> None:
    """An S3 run stages on a local disk: when that fills, exit 4 says so, naming the folder."""
    endpoint, bucket = s3_bucket
    server: SimulatorThread = make_sim(dataset=DatasetSpec(seed=3, rows_per_day=400))
    disk = tmp_path / "staging"
    argv = ["run", *RANGE, "--out", f"s3://{bucket}/lake", "--base-url", server.url]
    # A day's staged file is about 10 KiB: 4 KiB cannot hold one.
    args = [*argv, "--s3-endpoint-url", endpoint]
    result = on_small_disk(disk, args, size="4k", env={"TMPDIR": str(disk)})
    assert result.returncode == 4, result.stderr
    line = error_line(result.stderr)
    assert "local staging folder of this S3 run" in line and str(disk) in line


def test_a_bug_is_exit_70_not_a_failed_window(sim: SimulatorThread, tmp_path: Path) -> None:
    """An exception that is not ours reaches exit 70 with the debug hint; no window "fails"."""
    out = tmp_path / "lake"
    argv = ["run", *RANGE, "--out", str(out), "--base-url", sim.url, "--feeds", "ips"]
    result = python(
        f"""
        import sys
        import harvester.orchestrator as orchestrator

        def broken(*args, **kwargs):
            raise ZeroDivisionError("a bug in the converter")

        orchestrator.items_to_table = broken
        from harvester.cli import main
        sys.exit(main({argv!r}))
        """,
        env={"THREATGRID_API_KEY": SIM_KEY},
    )
    assert result.returncode == 70, result.stderr
    line = error_line(result.stderr)
    assert "internal error: ZeroDivisionError" in line and "--log-level debug" in line
    assert "window.failed" not in result.stderr


def test_a_lone_surrogate_is_a_data_error() -> None:
    """The documented unstorable string is a DataError (a failed window), not a bug."""
    from harvester.errors import DataError
    from harvester.schemas import FEEDS, items_to_table

    item = {
        "timestamp": "2024-01-01T00:00:00Z",
        "ioc": "x",
        "confidence": 90,
        "severity": 90,
        "sample_id": "\ud800",
        "sample_sha256": "a" * 64,
        "domain": "example.com",
    }
    with pytest.raises(DataError, match="lone UTF-16 surrogate"):
        items_to_table(FEEDS["domains"], [item])


KEY = "tgk-THIRD-PARTY-7731-secret"


def test_third_party_log_lines_come_out_as_json_and_scrubbed() -> None:
    """Library log lines (aiohttp, botocore) join the JSON stream, with the key scrubbed."""
    result = python(
        f"""
        import logging
        from harvester import logs
        from harvester.secret import Secret

        Secret({KEY!r})
        logs.configure(level="info", json=True)
        import harvester.client, harvester.s3
        logging.getLogger("aiohttp.client").warning("GET http://x/?api_key=%s failed", {KEY!r})
        logging.getLogger("botocore.hooks").error("token {KEY} in the message")
        try:
            raise ValueError({KEY!r})
        except ValueError:
            logging.getLogger("urllib3.connectionpool").exception("retrying")
        """
    )
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stderr + result.stdout
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["logger"] for e in events] == [
        "aiohttp.client",
        "botocore.hooks",
        "urllib3.connectionpool",
    ]
    assert events[0]["event"] == "GET http://x/?api_key=*** failed"
    assert "***" in events[2]["exception"] and "ValueError" in events[2]["exception"]


def test_third_party_log_lines_are_scrubbed_when_harvester_is_a_library() -> None:
    """Used as a library (no harvester logging set up), the libraries' lines are scrubbed too."""
    result = python(
        f"""
        import io, logging
        stream = io.StringIO()
        logging.basicConfig(stream=stream, level=logging.DEBUG)
        import harvester.api  # what an Airflow task imports
        import harvester.s3
        from harvester.secret import Secret

        Secret({KEY!r})
        logging.getLogger("aiohttp.client").warning("url ?api_key=%s", {KEY!r})
        logging.getLogger("botocore.credentials").info("{KEY}")
        print(stream.getvalue())
        """
    )
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout and result.stdout.count("***") == 2


def test_plain_run_keeps_its_exit_codes(sim: SimulatorThread, tmp_path: Path) -> None:
    """The good path still exits 0 (guards the exit changes above against over-reach)."""
    out = tmp_path / "lake"
    argv = ["run", "--after", "2024-01-01", "--before", "2024-01-02", "--out", str(out)]
    result = cli([*argv, "--base-url", sim.url, "--feeds", "ips"])
    assert result.returncode == 0, result.stderr


def test_a_body_that_trickles_past_the_timeout_is_not_unreachable(make_sim, tmp_path: Path) -> None:
    """The API answered but the body was too slow: say so, exit 1, not "cannot reach" (5)."""
    from harvester.sim.server import Faults

    server = make_sim(faults=Faults(trickle_rate=1.0, trickle_bytes_per_second=100.0))
    argv = ["run", "--after", "2024-01-01", "--before", "2024-01-02", "--feeds", "ips"]
    argv += ["--out", str(tmp_path / "lake"), "--base-url", server.url]
    result = cli([*argv, "--request-timeout", "1", "--attempts", "1"])
    assert result.returncode == 1, result.stderr
    assert "cannot reach" not in result.stderr
    failed = [json.loads(x) for x in result.stderr.splitlines() if '"window.failed"' in x]
    assert failed and failed[0]["error"] == "ReadTimeout"
    assert "body did not arrive within --request-timeout 1s" in failed[0]["reason"]
