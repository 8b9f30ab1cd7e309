"""The jobtable command, against real databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import insert

from jobtable.cli import main
from jobtable.db import claims_sql, clock, migrate, reads_sql, result_rows, tables
from jobtable.db.engine import get_engine
from tests.sample_jobs import Echo, Keyed

APP = ["--app", "tests.sample_jobs"]


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def finish(uuid: str, status: str = tables.ERRORED) -> None:
    """Record a request as finished, the way a worker does."""
    with get_engine().begin() as conn:
        (row,) = claims_sql.claim(conn, ["default"], 1, worker_id="w", now=clock.utcnow())
        assert row.task_id == uuid
        conn.execute(tables.request.delete().where(tables.request.c.id == row.id))
        conn.execute(insert(tables.result).values(result_rows.result_values(row, status, ended_at=clock.utcnow())))


def test_every_command_has_help() -> None:
    commands = ["migrate", "stats", "requests", "results", "retry", "cancel", "purge", "clear", "list", "run"]
    for command in commands:
        result = cli(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage:" in result.output


def test_console_script_is_installed(subprocess_env: dict[str, str]) -> None:
    script = str(Path(sys.executable).parent / "jobtable")
    out = subprocess.run([script, "--help"], env=subprocess_env, capture_output=True, text=True, check=True)
    assert "migrate" in out.stdout


def test_migrate_is_idempotent(db_url: str) -> None:
    result = cli("migrate")
    assert result.exit_code == 0
    assert f"schema is up to date (revision {migrate.head_revision()})" in result.output


def test_migrate_creates_schema(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobtable import settings

    monkeypatch.setenv("JOBTABLE_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    settings.reset()
    result = cli("migrate")
    assert f"migrated from empty to revision {migrate.head_revision()}" in result.output
    settings.reset()


def test_stats_requests_results(db_url: str) -> None:
    first = Echo().run_in_worker()
    Echo().run_in_worker()
    Echo().run_in_worker()
    Echo().run_in_worker(queue="slow", delay=timedelta(hours=1))
    assert first is not None
    finish(first.uuid)
    out = cli("stats").output
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    # queue -> pending, scheduled, claimed, running, successful, errored, ...
    assert lines["default"][:6] == ["2", "0", "0", "0", "0", "1"]
    assert lines["slow"][:4] == ["0", "1", "0", "0"]

    out = cli("requests", "--queue", "slow").output
    assert "scheduled" in out and "slow" in out and "pending" not in out
    assert len(cli("requests", "--state", "pending").output.splitlines()) == 3
    out = cli("results", "--status", "errored").output
    assert "ERRORED" in out and "tests.sample_jobs.Echo" in out and first.uuid in out


def test_retry_links_attempts(db_url: str) -> None:
    request = Echo().run_in_worker()
    assert request is not None
    finish(request.uuid)
    result = cli("retry", request.uuid)
    assert result.exit_code == 0, result.output
    assert "attempt 2" in result.output
    with get_engine().connect() as conn:
        (retry,) = reads_sql.list_requests(conn)
        (previous,) = reads_sql.list_results(conn)
    assert (retry.task_id, retry.attempt, retry.state) == (request.uuid, 2, "pending")
    assert previous.retried is True and previous.attempt == 1
    # A job that is waiting cannot be retried again.
    result = CliRunner().invoke(main, ["retry", request.uuid])
    assert result.exit_code == 1 and "is pending; only finished jobs can be retried" in result.output


def test_retry_respects_concurrency_key(db_url: str) -> None:
    first = Keyed("k").run_in_worker()
    assert first is not None
    finish(first.uuid)
    assert Keyed("k").run_in_worker() is not None
    result = CliRunner().invoke(main, ["retry", first.uuid])
    assert result.exit_code == 1 and "concurrency key 'k' is pending or running" in result.output


def test_retry_unknown(db_url: str) -> None:
    result = CliRunner().invoke(main, ["retry", "nope"])
    assert result.exit_code == 1 and "No result has uuid nope" in result.output


def test_cancel(db_url: str) -> None:
    request = Echo().run_in_worker(delay=60)
    assert request is not None
    assert "Cancelled" in cli("cancel", request.uuid).output
    with get_engine().connect() as conn:
        assert reads_sql.list_requests(conn) == []
        (cancelled,) = reads_sql.list_results(conn)
    assert cancelled.status == "CANCELLED"
    result = CliRunner().invoke(main, ["cancel", request.uuid])
    assert result.exit_code == 1 and "No pending job has uuid" in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "abc", "1e999", ""])
def test_cancel_refuses_a_timeout_that_is_not_seconds(db_url: str, value: str) -> None:
    request = Echo().run_in_worker(delay=60)
    assert request is not None
    result = CliRunner().invoke(main, ["cancel", request.uuid, "--timeout", value])
    assert result.exit_code == 2 and "--timeout" in result.output, result.output
    with get_engine().connect() as conn:
        assert reads_sql.list_requests(conn) != []  # nothing cancelled


def test_cancel_unknown_uuid_and_hostile_uuids(db_url: str) -> None:
    for uuid in ["nope", "'; DROP TABLE jobtable_request; --", "\u00e9\U0001f600"]:
        result = CliRunner().invoke(main, ["cancel", uuid])
        assert result.exit_code == 1 and "No pending job has uuid" in result.output, (uuid, result.output)
    # What no uuid can be is refused before the database sees it.
    for uuid in ["x" * 5000, "nul\x00byte", "\udcff", ""]:
        result = CliRunner().invoke(main, ["cancel", uuid])
        assert result.exit_code == 2 and "UUID" in result.output, (uuid, result.output)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uuid=st.text(max_size=300))
def test_cancel_any_text_as_uuid_is_a_clear_answer(db_url: str, uuid: str) -> None:
    """Whatever text is given as UUID: refused naming UUID (exit 2) or not
    found (exit 1) -- never a driver error or a traceback."""
    result = CliRunner().invoke(main, ["cancel", "--", uuid])  # "--": a uuid such as "--help" is not an option
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert (result.exit_code, "UUID" in result.output or "No pending job has uuid" in result.output) in [
        (1, True),
        (2, True),
    ], result.output


def test_purge(db_url: str) -> None:
    Echo().run_in_worker()
    Echo().run_in_worker(queue="slow")
    Echo().run_in_worker(queue="slow", delay=60)
    result = cli("purge", "--queue", "slow", input="n\n")
    assert result.exit_code == 1  # aborted
    assert "Deleted 2 job(s) from queue 'slow'" in cli("purge", "--queue", "slow", "-y").output
    assert "Deleted 1 job(s) from all queues" in cli("purge", "-y").output


def test_clear_removes_results_past_retention(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = Echo().run_in_worker(), Echo().run_in_worker()
    assert old and new
    finish(old.uuid)
    finish(new.uuid)
    with get_engine().begin() as conn:
        conn.execute(
            tables.result.update()
            .where(tables.result.c.task_id == old.uuid)
            .values(ended_at=clock.utcnow() - timedelta(days=8))
        )
    assert "Deleted 1 result(s) older than 604800 seconds" in cli("clear").output
    with get_engine().connect() as conn:
        assert [r.task_id for r in reads_sql.list_results(conn)] == [new.uuid]


def test_list_and_run(db_url: str) -> None:
    out = cli(*APP, "list").output
    assert "tests.sample_jobs.Echo  Returns its arguments." in out
    out = cli(*APP, "run", "tests.sample_jobs.Echo", "--args", '[1, "two"]').output
    assert '{"args": [1, "two"], "kwargs": {}}' in out
    out = cli(*APP, "run", "tests.sample_jobs.Echo", "--args", '{"a": 1}').output
    assert '"kwargs": {"a": 1}' in out


def test_run_unknown_job_is_a_clear_error(db_url: str) -> None:
    result = CliRunner().invoke(main, [*APP, "run", "nope.Job"])
    assert result.exit_code == 1
    assert "No job is registered as 'nope.Job'" in result.output
    result = CliRunner().invoke(main, ["--app", "no_such_module", "list"])
    assert result.exit_code == 1 and "Cannot import the app module 'no_such_module'" in result.output


def test_migrate_refuses_a_database_of_a_newer_jobtable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import text

    from jobtable import settings
    from jobtable.db.engine import create_jobtable_engine

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    engine = create_jobtable_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0999'"))
    engine.dispose()
    monkeypatch.setenv("JOBTABLE_DATABASE_URL", url)
    settings.reset()
    for command in ("migrate", "stats"):
        result = CliRunner().invoke(main, [command])
        assert result.exit_code == 1, result.output
        assert "was migrated by a newer jobtable (schema revision '0999')" in result.output
        assert "Upgrade jobtable" in result.output
    settings.reset()


def test_results_on_a_missing_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobtable import settings

    monkeypatch.setenv("JOBTABLE_DATABASE_URL", f"sqlite:///{tmp_path / 'nothing.db'}")
    settings.reset()
    result = CliRunner().invoke(main, ["results"])
    assert result.exit_code == 1
    assert "nothing.db does not exist. Create it with `jobtable migrate`" in result.output
    assert not (tmp_path / "nothing.db").exists()
    settings.reset()


def test_worker_refuses_bad_flags_before_starting(db_url: str) -> None:
    result = CliRunner().invoke(main, [*APP, "worker", "--burst", "--max-processes", "-1"])
    assert result.exit_code == 1
    assert "Invalid setting --max-processes -1 (on the command line): it must be at least 0" in result.output
    result = CliRunner().invoke(main, [*APP, "worker", "--burst", "--stats-every", "inf"])
    assert result.exit_code == 1 and "--stats-every inf" in result.output and "finite" in result.output


def test_limits_out_of_range_are_refused(db_url: str) -> None:
    for command in ("requests", "results"):
        result = CliRunner().invoke(main, [command, "--limit", "-1"])
        assert result.exit_code == 2 and "--limit" in result.output and "1<=x<=100000" in result.output
