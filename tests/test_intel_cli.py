"""``harvester indicators`` and ``harvester export`` as users run them: output, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harvester.sim.server import SimulatorThread

from cli import cli
from harvesting import harvest
from intel_check import table_rows


@pytest.fixture(scope="module")
def lake(sim: SimulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "lake"
    result = harvest(
        sim.url, str(out), after="2024-01-01", before="2024-01-03", confidence=0, severity=0
    )
    assert result.ok
    return out


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("harvester: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_indicators_then_export_from_the_command_line(lake: Path, tmp_path: Path) -> None:
    own = tmp_path / "lake"
    shutil.copytree(lake, own)
    built = cli(["indicators", "--out", str(own), "--log-level", "warning"], key=None)
    assert built.returncode == 0, built.stderr
    assert "rebuilt" in built.stdout and "sample_sha256" in built.stdout
    counts = {k: len(v) for k, v in table_rows(str(own)).items()}
    assert f"domain         {counts['domain']}" in built.stdout
    again = cli(["indicators", "--out", str(own), "--log-level", "warning"], key=None)
    assert again.returncode == 0 and "up to date" in again.stdout
    out = tmp_path / "edl" / "domains.txt"
    exported = cli(
        ["export", "--out", str(own), "--format", "txt", "--types", "domain", "--to", str(out),
         "--log-level", "warning"],
        key=None,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert f"Exported {counts['domain']} indicators as txt" in exported.stdout
    assert len(out.read_text(encoding="utf-8").splitlines()) == counts["domain"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--types", "domain,hash"], "--types: unknown type 'hash'"),
        (["--since", "yesterday"], "--since 'yesterday' is neither a date nor a duration"),
        (["--since", "2024-13-01"], "--since '2024-13-01' is neither a date nor a duration"),
        (["--min-severity", "high"], "--min-severity 'high' is not a whole number"),
        (["--allowlist", "/no/such/allow.txt"], "--allowlist /no/such/allow.txt: no such file"),
        (["--memory-limit", "lots"], "--memory-limit 'lots' is not a size"),
        (["--tlp", "purple"], "argument --tlp: invalid choice: 'purple'"),
    ],
)
def test_bad_export_input_is_one_line_and_writes_nothing(
    lake: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "never.txt"
    result = cli(
        ["export", "--out", str(lake), "--format", "txt", "--to", str(out), *extra], key=None
    )
    assert result.returncode == 2
    assert message in error_line(result.stderr)
    assert not out.exists()
    assert not (lake / "indicators").exists()  # not built: nothing read either


def test_export_without_a_table_or_into_a_folder_is_refused(lake: Path, tmp_path: Path) -> None:
    result = cli(["export", "--out", str(lake), "--format", "csv", "--to", str(tmp_path / "x.csv")])
    assert result.returncode == 2
    assert "has no indicator table; build it first: harvester indicators" in error_line(
        result.stderr
    )
    assert not (tmp_path / "x.csv").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    result = cli(["export", "--out", str(lake), "--format", "stix21", "--to", str(folder)])
    assert result.returncode == 2
    assert "is a folder; name the file to write" in error_line(result.stderr)
    assert not list(folder.iterdir())


def test_bad_memory_limit_for_indicators(lake: Path) -> None:
    result = cli(["indicators", "--out", str(lake), "--memory-limit", "1 lot"])
    assert result.returncode == 2
    assert "--memory-limit '1 lot' is not a size" in error_line(result.stderr)
    assert not (lake / "indicators").exists() and not (lake / "_indicators").exists()


def test_indicators_on_a_folder_without_data_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "typo"
    result = cli(["indicators", "--out", str(empty)])
    assert result.returncode == 2
    assert "holds no feed data to build indicators from" in error_line(result.stderr)
    assert not empty.exists()
