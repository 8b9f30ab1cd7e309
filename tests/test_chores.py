"""Chores: registration, discovery of chores.py, the chores commands, and the
built-in chore that clears old results."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, insert, select

from jobtable.chores import CLEAR_BATCH, Chore, ChoresRegistry, RunChores, UnknownChore, chores_registry
from jobtable.cli import main
from jobtable.db import clock, tables
from jobtable.db.engine import get_engine
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

APP = ["--app", "tests.sample_chores"]


@pytest.fixture(autouse=True)
def _no_leaked_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment beats jobtable.configure(): a JOBTABLE_DATABASE_URL left
    # in os.environ by another test module would point db_url's tests at
    # another database.
    monkeypatch.delenv("JOBTABLE_DATABASE_URL", raising=False)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- registering ---------------------------------------------------------------------------


def test_functions_and_classes_register_with_their_docstrings() -> None:
    registry = ChoresRegistry()

    def clear_expired() -> str:
        """
        Delete sessions that have expired.
        """
        return "3 expired sessions deleted"

    class Rebuild(Chore):
        """Rebuild the index."""

        def run(self) -> int:
            return 7

    registry.register(clear_expired, "sessions")
    registry.register(Rebuild, "search")
    assert [c.name for c in registry.all()] == ["search.Rebuild", "sessions.clear_expired"]
    assert registry.chores["sessions.clear_expired"].description == "Delete sessions that have expired."
    assert registry.chores["sessions.clear_expired"].run() == "3 expired sessions deleted"
    assert registry.chores["search.Rebuild"].run() == 7
    assert [c.name for c in registry.select(groups=["search"])] == ["search.Rebuild"]
    with pytest.raises(UnknownChore, match="No chore is named 'nope'. Chores: search.Rebuild, sessions.clear_expired"):
        registry.select(["nope"])
    with pytest.raises(TypeError, match="Chore subclass"):
        registry.register(int, "x")


def test_decorator_forms() -> None:
    import tests.sample_chores as sample

    assert chores_registry.chores["sample.tidy"].target is sample.tidy  # the function is returned unchanged
    assert chores_registry.chores["counting.Recount"].target is sample.Recount
    assert "jobtable.clear_results" in chores_registry.chores  # built in


# -- the commands ----------------------------------------------------------------------------


def test_list(db_url: str) -> None:
    result = cli(*APP, "chores", "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(line.startswith("sample.tidy") and line.endswith("Tidy up.") for line in lines)
    assert "longer description" not in result.output
    assert any(line.startswith("jobtable.clear_results") for line in lines)
    only = cli(*APP, "chores", "list", "--name", "counting.Recount")
    assert only.output.split() == ["counting.Recount", "Recount", "the", "things."]


def test_run_some_and_print_what_they_return(db_url: str) -> None:
    result = cli(*APP, "chores", "run", "--name", "sample.tidy", "--name", "counting.Recount", "--name", "sample.quiet")
    assert result.exit_code == 0, result.output
    assert "Running counting.Recount... done in" in result.output and ": 42" in result.output
    assert "Running sample.tidy... done in" in result.output and ": tidied 3 things" in result.output
    assert "3 chore(s) succeeded, 0 failed." in result.output


def test_a_failing_chore_is_reported_and_the_others_still_run(db_url: str) -> None:
    result = cli(*APP, "chores", "run")
    assert result.exit_code == 1
    assert "Running sample.broken... FAILED (ValueError: boom on purpose)" in result.stdout
    assert "Traceback" in result.stderr and "boom on purpose" in result.stderr
    # Chores after the failing one ran (they are in name order).
    assert "Running sample.tidy... done" in result.stdout
    assert "Running jobtable.clear_results... done" in result.stdout
    assert "failed: sample.broken" in result.stdout


def test_dry_run_runs_nothing(db_url: str) -> None:
    result = cli(*APP, "chores", "run", "--dry-run", "--group", "sample")
    assert result.exit_code == 0
    assert result.output.splitlines() == ["Would run sample.broken", "Would run sample.quiet", "Would run sample.tidy"]


def test_unknown_name_is_an_error(db_url: str) -> None:
    result = CliRunner().invoke(main, [*APP, "chores", "run", "--name", "sample.nope"])
    assert result.exit_code == 1
    assert "No chore is named 'sample.nope'" in result.output and "sample.tidy" in result.output


def test_chores_py_of_the_app_and_of_packages_is_discovered(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    for package, body in {
        "myapp": '''
            from jobtable.chores import register_chore

            @register_chore("myapp")
            def hello():
                """Say hello."""
                return "hello from myapp"
        ''',
        "otherpkg": '''
            from jobtable.chores import Chore, register_chore

            @register_chore("other")
            class Sweep(Chore):
                """Sweep up."""
                def run(self):
                    raise RuntimeError("sweeping failed")
        ''',
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "chores.py").write_text(textwrap.dedent(body))
    env = {**subprocess_env, "JOBTABLE_APP": "myapp", "JOBTABLE_PACKAGES": "otherpkg"}
    command = [sys.executable, "-m", "jobtable", "chores"]
    listed = subprocess.run([*command, "list"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "myapp.hello" in listed.stdout and "other.Sweep" in listed.stdout
    ran = subprocess.run([*command, "run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 1
    assert "hello from myapp" in ran.stdout
    assert "RuntimeError: sweeping failed" in ran.stderr
    assert "2 chore(s) succeeded, 1 failed: other.Sweep" in ran.stdout


# -- chores in the worker and the built-in chore --------------------------------------------------


def _results(ages_in_days: list[float]) -> None:
    now = clock.utcnow()
    rows = [
        {
            "task_id": f"t{i}",
            "task_name": "tests.sample_jobs.Echo",
            "queue": "default",
            "status": tables.SUCCESSFUL,
            "ended_at": now - timedelta(days=age),
        }
        for i, age in enumerate(ages_in_days)
    ]
    with get_engine().begin() as conn:
        conn.execute(insert(tables.result), rows)


def _count_results() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.result)).scalar_one())


def test_clear_results_deletes_only_results_past_retention(db_url: str) -> None:
    old = CLEAR_BATCH * 2 + 7  # several batches
    _results([8.0] * old + [6.0] * 5)  # retention: 7 days
    message = chores_registry.chores["jobtable.clear_results"].run()
    assert message == f"{old} result(s) older than 604800 seconds deleted"
    assert _count_results() == 5


def test_run_chores_job(db_url: str) -> None:
    import tests.sample_chores  # noqa: F401

    assert RunChores(["sample.tidy", "counting.Recount"]).run() == {"sample.tidy": "tidied 3 things", "counting.Recount": "42"}
    with pytest.raises(RuntimeError, match="1 of 2 chore\\(s\\) failed:\nsample.broken: Traceback"):
        RunChores(["sample.broken", "sample.quiet"]).run()
