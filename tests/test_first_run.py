"""The first commands a user runs, in an empty directory with nothing configured.

Each command runs as a real process in an empty directory, with no
JOBTABLE_* variable and no pyproject.toml above it: the zero-config default
is ``sqlite:///jobtable.sqlite3`` of the current directory, which only
``jobtable migrate`` creates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Commands that read or change the queue: none may leave a file behind.
NEEDS_DATABASE = [
    ["worker", "--burst", "--max-processes", "1"],
    ["results"],
    ["requests"],
    ["stats"],
    ["purge", "--yes"],
    ["clear"],
    ["retry", "0f0f0f0f-0000-0000-0000-000000000000"],
    ["cancel", "0f0f0f0f-0000-0000-0000-000000000000"],
    ["schedule"],
    ["dashboard", "--port", "0"],
]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "jobtable", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    # tmp_path has no pyproject.toml above it (pytest's base temp directory).
    assert not any(parent.joinpath("pyproject.toml").exists() for parent in [tmp_path, *tmp_path.parents])
    return tmp_path


@pytest.mark.parametrize("command", NEEDS_DATABASE, ids=lambda c: c[0])
def test_no_database_configured_fails_with_the_fix_and_creates_nothing(empty_dir: Path, command: list[str]) -> None:
    done = _run(empty_dir, *command)
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "No database is configured" in message
    assert "JOBTABLE_DATABASE_URL" in message and "database_url in [tool.jobtable]" in message
    assert "`jobtable migrate`" in message
    assert "Traceback" not in done.stderr
    assert list(empty_dir.iterdir()) == []


def test_migrate_creates_the_default_file_and_says_so_then_commands_work(empty_dir: Path) -> None:
    done = _run(empty_dir, "migrate")
    assert done.returncode == 0, done.stderr
    assert "migrated from empty" in done.stdout
    said = " ".join(done.stdout.split())
    assert "No database is configured, so this is the default SQLite file jobtable.sqlite3" in said
    assert (empty_dir / "jobtable.sqlite3").is_file()
    done = _run(empty_dir, "stats")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "No jobs and no results."


def test_a_configured_database_is_not_called_the_default(empty_dir: Path) -> None:
    (empty_dir / "pyproject.toml").write_text('[tool.jobtable]\ndatabase_url = "sqlite:///queue.db"\n')
    done = _run(empty_dir, "results")
    assert done.returncode == 1
    assert "queue.db does not exist" in done.stderr and "No database is configured" not in done.stderr
    assert sorted(p.name for p in empty_dir.iterdir()) == ["pyproject.toml"]
    done = _run(empty_dir, "migrate")
    assert done.returncode == 0 and "default SQLite file" not in done.stdout
    assert (empty_dir / "queue.db").is_file()
