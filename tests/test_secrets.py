"""Secret hygiene: the API key appears in no output, log, error, manifest, report or file."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.secret import Secret, redact
from harvester.sim.server import Faults

from cli import cli

KEY = "tgk-SECRET-4242-do-not-leak"


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["header", "query"])
def test_key_never_leaks_even_at_debug_with_faults_and_401(
    make_sim, tmp_path: Path, auth: str
) -> None:
    """Faults, failing windows and a 401 at debug level: the key is nowhere to be found."""
    faults = Faults(
        seed=9,
        error_rate=0.1,
        drop_rate=0.05,
        truncate_rate=0.05,
        html_rate=0.05,
        fail_always=("urls",),
    )
    server = make_sim(api_key=KEY, faults=faults, max_limit=25)
    out = tmp_path / "lake"
    args = [
        "run",
        "--after",
        "2024-01-01",
        "--before",
        "2024-01-03",
        "--out",
        str(out),
        "--base-url",
        server.url,
        "--feeds",
        "ips,urls,domains",
        "--auth",
        auth,
        "--attempts",
        "3",
        "--retry-timeout",
        "5",
        "--log-level",
        "debug",
    ]
    outputs = []
    failing = cli(args, key=KEY)
    assert failing.returncode == 1, failing.stderr  # urls always fails
    outputs.append(failing.stdout + failing.stderr)
    refused = cli(args, key=KEY + "-wrong")
    assert refused.returncode == 3
    outputs.append(refused.stdout + refused.stderr)
    unreachable = cli([*args[:8], "http://127.0.0.1:9", *args[9:]], key=KEY)
    assert unreachable.returncode == 5
    outputs.append(unreachable.stdout + unreachable.stderr)
    for text in outputs:
        assert KEY not in text
    assert "window.failed" in outputs[0]
    assert files_containing(out, KEY.encode()) == []
    assert list((out / "_manifest").rglob("*.json")) and list((out / "_runs").glob("*.json"))


def test_secret_hides_itself_and_redact_scrubs_it() -> None:
    """A Secret prints as *** in str, repr and f-strings; redact() removes it from any text."""
    secret = Secret("abcd-1234-efgh")
    assert "abcd" not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == "abcd-1234-efgh"
    url = "http://x/api?api_key=abcd-1234-efgh&after=1"
    assert redact(url) == "http://x/api?api_key=***&after=1"
