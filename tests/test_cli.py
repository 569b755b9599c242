"""The command line contract: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harvester.sim.server import SimulatorThread

from cli import cli
from lakecheck import assert_lake_exact

RANGE = ["--after", "2024-01-01", "--before", "2024-01-03"]


def error_line(stderr: str) -> str:
    """The one line a user sees; asserts there is exactly one and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("harvester: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--after", "2024-01-03", "--before", "2024-01-01"], "is not before --before"),
        (["--after", "2024-01-01", "--before", "2024-01-01"], "is not before --before"),
        (
            ["--after", "last tuesday", "--before", "2024-01-01"],
            "--after 'last tuesday' is not ISO",
        ),
        (["--after", "2024-01-01T00:00:00", "--before", "2024-01-02"], "has no time zone"),
        (["--after", "1969-12-01", "--before", "2024-01-01"], "is before 1970-01-01"),
        ([*RANGE, "--feeds", "ips,hashes"], "unknown feed 'hashes'"),
        ([*RANGE, "--window", "2h30m"], "--window '2h30m' is not a duration"),
        ([*RANGE, "--filter", "domain"], "is not KEY=VALUE"),
        ([*RANGE, "--shard", "2"], "--shard '2' is not I/N"),
        ([*RANGE, "--shard", "4/4"], "shard 4/4 is invalid"),
        ([*RANGE, "--limit", "0"], "--limit 0 must be at least 1"),
        ([*RANGE, "--concurrency", "-2"], "--concurrency -2 must be at least 1"),
        ([*RANGE, "--rate", "0"], "--rate 0.0 must be greater than 0"),
        ([*RANGE, "--rate", "-1"], "must be greater than 0"),
        ([*RANGE, "--limit", "ten"], "--limit 'ten' is not a whole number"),
        ([*RANGE, "--confidence", "120"], "--confidence 120 is out of range"),
        (
            ["--after", "2024-01-01T05:00:00Z", "--before", "2024-01-03"],
            "not on the 1d window grid",
        ),
        ([*RANGE, "--base-url", "panacea.threatgrid.com"], "is not an http(s) URL"),
        ([*RANGE, "--out", "ftp://x/y"], "unknown scheme"),
        ([*RANGE, "--out", "s3://"], "s3://"),
        (
            [*RANGE, "--s3-multipart-threshold", "5242879"],
            "--s3-multipart-threshold 5242879 is below S3's smallest part (5 MiB)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written_no_request(
    sim: SimulatorThread, tmp_path: Path, args: list[str], message: str
) -> None:
    """Input invalid on its face: one line naming it, exit 2, no file, no API call."""
    before = sim.stats.requests
    out = tmp_path / "lake"
    argv = ["run", "--out", str(out), "--base-url", sim.url, *args]
    result = cli(argv)
    assert result.returncode == 2, result.stderr
    assert message in error_line(result.stderr)
    assert not out.exists()
    assert sim.stats.requests == before


def test_missing_key_names_the_variable(sim: SimulatorThread, tmp_path: Path) -> None:
    """No THREATGRID_API_KEY: exit 2 with a line that says to set it; no request made."""
    before = sim.stats.requests
    result = cli(["run", *RANGE, "--out", str(tmp_path / "lake"), "--base-url", sim.url], key=None)
    assert result.returncode == 2
    assert "THREATGRID_API_KEY is not set" in error_line(result.stderr)
    assert sim.stats.requests == before


def test_refused_key_exits_3_and_writes_nothing(sim: SimulatorThread, tmp_path: Path) -> None:
    """A 401 stops the run: exit 3, a line naming THREATGRID_API_KEY, an empty out."""
    out = tmp_path / "lake"
    result = cli(["run", *RANGE, "--out", str(out), "--base-url", sim.url], key="not-the-key-77")
    assert result.returncode == 3, result.stderr
    line = error_line(result.stderr)
    assert "THREATGRID_API_KEY" in line and "not-the-key-77" not in result.stderr + result.stdout
    assert not out.exists()


def test_unreachable_base_url_exits_5_and_writes_nothing(tmp_path: Path) -> None:
    """Nothing listening at --base-url: exit 5, a line saying to check it, an empty out."""
    out = tmp_path / "lake"
    result = cli(["run", *RANGE, "--out", str(out), "--base-url", "http://127.0.0.1:9"])
    assert result.returncode == 5, result.stderr
    assert "check --base-url" in error_line(result.stderr)
    assert not out.exists()


def test_unwritable_out_exits_4(sim: SimulatorThread, tmp_path: Path) -> None:
    """An --out that cannot be a folder: exit 4 and a line saying to pick another."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli(["run", *RANGE, "--out", str(blocker / "lake"), "--base-url", sim.url])
    assert result.returncode == 4, result.stderr
    assert "pick a folder you can write to" in error_line(result.stderr)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('after = "2024-01-01"\nbefore = "2024-01-03"\nwindoww = "1d"\n', "unknown key(s) windoww"),
        (
            'after = "2024-01-01"\nbefore = "2024-01-03"\nconcurrency = "8"\n',
            "concurrency is str, expected int",
        ),
        ("after = [unclosed\n", "is not valid TOML"),
    ],
)
def test_bad_config_file_is_exit_2(
    sim: SimulatorThread, tmp_path: Path, toml: str, message: str
) -> None:
    """A config file with unknown keys, wrong types or bad syntax is refused by name."""
    config = tmp_path / "job.toml"
    config.write_text(toml)
    result = cli(
        ["run", "--config", str(config), "--out", str(tmp_path / "lake"), "--base-url", sim.url]
    )
    assert result.returncode == 2
    assert message in error_line(result.stderr)


def test_flags_override_config_file(sim: SimulatorThread, tmp_path: Path) -> None:
    """Values from --config apply, and a flag beats the file."""
    config = tmp_path / "job.toml"
    config.write_text(
        f'after = "2024-01-01"\nbefore = "2024-01-03"\nfeeds = "ips"\n'
        f'base_url = "{sim.url}"\nconfidence = 0\nseverity = 0\n'
    )
    out = tmp_path / "lake"
    result = cli(["run", "--config", str(config), "--out", str(out), "--feeds", "urls"])
    assert result.returncode == 0, result.stderr
    assert (out / "urls").is_dir() and not (out / "ips").exists()


def test_run_exit_0_logs_json_and_summary_per_feed(sim: SimulatorThread, tmp_path: Path) -> None:
    """A good run exits 0, logs JSON lines off a TTY, ends with one summary line per feed."""
    out = tmp_path / "lake"
    result = cli(
        [
            "run",
            *RANGE,
            "--out",
            str(out),
            "--base-url",
            sim.url,
            "--feeds",
            "ips,paths",
            "--confidence",
            "0",
            "--severity",
            "0",
        ]
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    summaries = [e for e in events if e["event"] == "feed.summary"]
    assert [e["feed"] for e in summaries] == ["ips", "paths"]
    assert sum(1 for e in events if e["event"] == "window.done") == 4
    commits = [e for e in events if e["event"] == "commit.done"]
    assert sum(e["days"] for e in commits) == 4  # each feed-day committed once
    assert {f for e in commits for f in e["feeds"]} == {"ips", "paths"}
    from datetime import UTC, datetime

    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    truth = {
        f: sim.dataset.truth(f, start, end, confidence=0, severity=0) for f in ("ips", "paths")
    }
    counts = assert_lake_exact(str(out), truth)
    assert {e["feed"]: e["rows"] for e in summaries} == counts


def test_every_command_has_help_with_examples() -> None:
    """Each subcommand's --help works and shows an example."""
    from harvester.cli import COMMANDS

    assert {"indicators", "export"} <= set(COMMANDS)
    for command in COMMANDS:
        result = cli([command, "--help"])
        assert result.returncode == 0, (command, result.stderr)
        assert "example" in result.stdout, command


def test_every_config_key_is_a_flag_and_every_flag_a_config_key() -> None:
    """The TOML keys and the run flags are one set, so neither can drift from the other."""
    from harvester.cli import build_parser
    from harvester.config import OPTION_TYPES

    run = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
        if a.prog.endswith(" run")
    )
    flags = {a.dest for a in run._actions if a.option_strings} - {
        "help",
        "config",
        "no_progress",
        "log_level",
        "log_json",
    }
    assert flags == set(OPTION_TYPES)


def test_since_last_through_the_command_line(sim: SimulatorThread, tmp_path: Path) -> None:
    """`run --since-last --before ... --lag` continues from the lake, as cron would run it."""
    out = tmp_path / "lake"
    first = cli(["run", *RANGE, "--out", str(out), "--base-url", sim.url, "--feeds", "ips"])
    assert first.returncode == 0, first.stderr
    args = [
        "run",
        "--since-last",
        "--before",
        "2024-01-04T06:00:00Z",
        "--lag",
        "1h",
        "--out",
        str(out),
        "--base-url",
        sim.url,
        "--feeds",
        "ips",
    ]
    second = cli(args)
    assert second.returncode == 0, second.stderr
    done = [json.loads(x) for x in second.stderr.splitlines() if '"window.done"' in x]
    assert [e["window"] for e in done] == ["[2024-01-03T00:00:00Z, 2024-01-04T00:00:00Z)"]
