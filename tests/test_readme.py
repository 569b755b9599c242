"""Every command the README shows parses with the real parser, and its options validate."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harvester.cli import _options, build_parser
from harvester.config import build_config

README = Path(__file__).resolve().parent.parent / "README.md"
_INLINE = re.compile(r"`(harvester [^`]+)`")
_COMMAND = re.compile(r"^(?:[\d*]+\s+){0,5}(?:[A-Z_][A-Z0-9_]*=\S*\s+)*harvester\s")


def shell_blocks(text: str) -> list[str]:
    """The fenced code blocks of ``text`` that are shell (``sh``, ``bash`` or untagged)."""
    blocks: list[str] = []
    lines: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if lines is None:
                lines = [] if line[3:].strip() in ("", "sh", "bash", "console") else None
                if lines is None:
                    lines = ["<skip>"]
            else:
                if lines[:1] != ["<skip>"]:
                    blocks.append("\n".join(lines))
                lines = None
        elif lines is not None:
            lines.append(line)
    return blocks


def readme_commands() -> list[str]:
    """Each ``harvester ...`` command of the README, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    commands: list[str] = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s[|>]\s", line.split(" #", 1)[0])[0].strip()
            line = re.sub(r"\[(--[^\]|]+)\]", r"\1", line)  # an optional flag: show it on
            if not _COMMAND.match(line) or "[" in line or " ISO " in line:
                continue  # prose, another tool, or the synopsis with its placeholders
            words = shlex.split(line)
            words = words[words.index("harvester") :]  # no crontab fields or VAR=value
            commands.append(shlex.join(words))
    return commands


def readme_mentions() -> list[str]:
    """Commands the README's prose names inline (``harvester plan --json``): partial ones."""
    text = README.read_text(encoding="utf-8")
    return [c for c in _INLINE.findall(text) if "..." not in c and "|" not in c]


COMMANDS = readme_commands()
MENTIONS = readme_mentions()


def test_the_readme_shows_commands() -> None:
    """The extraction finds the README's examples (guards the test against finding none)."""
    assert len(COMMANDS) >= 8
    assert {c.split()[1] for c in COMMANDS} >= {"run", "plan", "status", "ddl"}


@pytest.mark.parametrize("command", MENTIONS)
def test_readme_mention_parses(command: str) -> None:
    """A command named in the prose exists, and so does each flag it names."""
    words = shlex.split(command)[1:]
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert words[0] in commands, f"the README mentions `{command}`: no such command"
    known = commands[words[0]]._option_string_actions
    unknown = [w for w in words[1:] if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"the README mentions `{command}`: {unknown} are not its flags"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_and_validates(command: str, tmp_path: Path) -> None:
    """The real parser accepts it; a run or plan also builds a valid configuration."""
    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"the README's `{command}` does not parse (exit {exc.code})")
    if args.command in ("run", "plan") and not (args.config or "").startswith("/"):
        # The README's crontab line reads a config file from /etc; the rest must validate.
        env = {"JOB_COMPLETION_INDEX": "0"}
        now = datetime(2024, 6, 1, 2, 15, tzinfo=UTC)
        options = _options(args)
        if options.get("since_last") and not options.get("after"):
            options["after"] = "2024-01-01"  # the first run's start, as the README says
        build_config(options, env, now=now, whole_job=args.command == "plan")
