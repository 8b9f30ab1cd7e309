"""Every ``jobtable ...`` command that README.md and the migration guide show
parses: the shell blocks and the inline code spans are extracted, and each
command goes through the real click tree with its commands' callbacks
replaced by a recorder (nothing is run; an unknown option, a bad value or a
missing argument fails as it would for a reader)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from jobtable.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "migration_guide").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "shell-session"}
# Spans that describe a command's syntax rather than show one (`jobtable worker [...]`).
PLACEHOLDERS = ("[", "…", "...", "|")
_ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")


_WRAPPERS = {"opentelemetry-instrument", "uv", "poetry", "run", "exec"}


def _command_from_line(line: str) -> str | None:
    """The ``jobtable ...`` command of a shell line (after ``$ ``, env
    assignments or a wrapper such as ``opentelemetry-instrument``), without
    its comment; None for other lines (``pip install jobtable``)."""
    line = _ENV_PREFIX.sub("", line.strip().removeprefix("$ "))
    words = shlex.split(line, comments=True)
    while words and words[0] in _WRAPPERS:
        words = words[1:]
    return shlex.join(words) if words and words[0] == "jobtable" else None


def _shell_blocks(text: str) -> Iterator[str]:
    lang: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip().lower(), []
            else:
                if lang in SHELL_LANGS:
                    yield "\n".join(lines).replace("\\\n", " ")
                lang = None
        elif lang is not None:
            lines.append(line)


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for every jobtable command shown in the docs."""
    found: dict[str, str] = {}
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        for block in _shell_blocks(text):
            for line in block.splitlines():
                command = _command_from_line(line)
                if command:
                    found.setdefault(command, f"{name} (shell block)")
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`(jobtable [^`]+)`", prose):
            span = " ".join(span.split())
            if any(p in span for p in PLACEHOLDERS) or span.startswith("jobtable ") is False:
                continue
            # `jobtable worker` and its options mentioned alone (`jobtable worker --max-processes`)
            # still parse once the option gets a value.
            found.setdefault(span, f"{name} (inline)")
    return sorted((where, command) for command, where in found.items())


def _commands(group: click.Group) -> Iterator[click.Command]:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            yield from _commands(command)
        else:
            yield command


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for command in _commands(main):

        def record(*args: Any, __name: str = command.name or "", **kwargs: Any) -> None:
            ctx = click.get_current_context()
            calls.append({"command": ctx.command_path, "params": kwargs, "app": ctx.find_root().obj.get("app")})

        monkeypatch.setattr(command, "callback", record)
    return calls


_VALUES_FOR_BARE_OPTIONS = {"--max-processes": "2", "--stats-every": "10", "--queue": "celery", "-q": "celery"}


def _runnable(command: str) -> list[str]:
    # N stands for a number in the docs (`--max-processes N`); other placeholders are strings.
    words = ["2" if word == "N" else word for word in shlex.split(command)[1:]]
    # An inline span may name an option without its value (`jobtable worker --max-processes`).
    if words and words[-1] in _VALUES_FOR_BARE_OPTIONS:
        words.append(_VALUES_FOR_BARE_OPTIONS[words[-1]])
    return words


def test_the_docs_show_commands() -> None:
    commands = [command for _, command in doc_commands()]
    # The extraction finds what a reader sees (guards against an extractor that finds nothing).
    assert "jobtable worker --app myapp" in commands
    assert "jobtable migrate" in commands
    assert any(c.startswith("jobtable worker --celery-app") for c in commands)
    assert len(commands) >= 20


@pytest.mark.parametrize(("where", "command"), doc_commands())
def test_a_documented_command_parses(where: str, command: str, recorded: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, _runnable(command), catch_exceptions=False)
    assert result.exit_code == 0, f"{command!r} shown in {where} does not parse:\n{result.output}"
    assert len(recorded) == 1, f"{command!r} ({where}) ran no command"


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--app", "proj.tasks", "--queue", "celery"],
        ["--app", "proj.tasks", "worker", "--queue", "celery"],
        ["worker", "run", "--app", "proj.tasks"],
        ["list", "--app", "proj.tasks"],
        ["chores", "list", "--app", "proj.tasks"],
        ["chores", "--app", "proj.tasks", "run", "--dry-run"],
        ["--app", "other", "schedule", "--app", "proj.tasks"],
    ],
)
def test_app_is_accepted_after_the_subcommand(args: list[str], recorded: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert recorded[0]["app"] == "proj.tasks"


def test_app_after_the_subcommand_imports_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not parsed only: ``jobtable list --app M`` imports M (its jobs are listed)."""
    monkeypatch.setenv("JOBTABLE_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    result = CliRunner().invoke(main, ["list", "--app", "tests.sample_jobs"])
    assert result.exit_code == 0, result.output
    assert "tests.sample_jobs.Echo" in result.output


def test_app_after_the_subcommand_names_a_missing_module() -> None:
    result = CliRunner().invoke(main, ["list", "--app", "no_such_module_xyz"])
    assert result.exit_code == 1 and "Cannot import the app module 'no_such_module_xyz'" in result.output
