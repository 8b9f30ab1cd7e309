"""Cancelling a running job on the native worker (worker/cancels.py): the
Job API's ``request.cancel()``, the shim's ``revoke(terminate=True)``, a job
that ignores the signal (its member killed and replaced), the threads pool;
the member's other jobs run once, nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobtable.db import tables

from tests.conftest import ALL_DIALECTS
from tests.worker_jobs import DeafToCancel, Log, Naps, lines, requests, results, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_cancel_running_job(db_url: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str) -> None:
    log = str(tmp_path / "log")
    # A thread's JobCancelled lands at its next bytecode: between naps (a
    # process's signal interrupts even one long sleep: the other tests).
    slow = (Naps(log, "slow") if pool == "threads" else Log(log, "slow", sleep=60)).run_in_worker(retries=3)
    after = Log(log, "after").run_in_worker()
    assert slow is not None and after is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1", "--pool", pool)
    try:
        wait_for(lambda: lines(log) == ["slow"], what="the slow job to start")
        started = time.monotonic()
        result = slow.cancel(timeout=20)
        took = time.monotonic() - started
        wait_for(lambda: results(after.uuid), what="the job after the cancelled one")
    finally:
        out = stop(proc)
    assert result.status == tables.CANCELLED, out
    assert took < 5, took  # the sleep is interrupted, not waited out
    (row,) = results(slow.uuid)  # one attempt: not retried despite retries=3
    assert row.status == tables.CANCELLED and row.error_type == "jobtable.JobCancelled" and not row.retried
    (done,) = results(after.uuid)
    assert done.status == tables.SUCCESSFUL
    assert lines(log) == ["slow", "after"]  # each once
    assert requests() == []


def test_job_deaf_to_cancel_is_killed_recorded_cancelled_and_member_replaced(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    deaf = DeafToCancel(log, "deaf").run_in_worker(retries=2)
    assert deaf is not None
    proc = start_worker(worker_env(subprocess_env, worker_timeout_grace=1), "--max-processes", "1")
    try:
        wait_for(lambda: lines(log) == ["deaf"], what="the job to start")
        result = deaf.cancel(timeout=20)
        later = Log(log, "later").run_in_worker()
        assert later is not None
        wait_for(lambda: results(later.uuid), what="a job on the replaced member")
    finally:
        out = stop(proc)
    assert result.status == tables.CANCELLED, out  # not LOST
    assert "did not stop" in result.error_message
    (row,) = results(deaf.uuid)
    assert not row.retried
    assert lines(log) == ["deaf", "later"]
    assert requests() == []


def test_shim_revoke_terminate_stops_running_task(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    from jobtable.shim.result import AsyncResult

    log = str(tmp_path / "log")
    slow = Log(log, "slow", sleep=60).run_in_worker(retries=1)
    assert slow is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        wait_for(lambda: lines(log) == ["slow"], what="the slow job to start")
        AsyncResult(slow.uuid).revoke(terminate=True)
        (row,) = wait_for(lambda: results(slow.uuid), timeout=20, what="the REVOKED result")
    finally:
        out = stop(proc)
    assert row.status == tables.CANCELLED, out
    assert row.error_type == "celery.exceptions.TaskRevokedError" and row.error_message == "terminated"
    assert AsyncResult(slow.uuid).state == "REVOKED"
    assert requests() == []


def test_celery_terminate_broadcast_records_a_stop_mark(db_url: str) -> None:
    """app.control.revoke(id, terminate=True) through the jobtable transport:
    the broadcast is read at publish; terminate adds the stop mark."""
    import json

    from jobtable.transport.revoke_broadcasts import revokes_in

    def body(**arguments: object) -> dict[str, object]:
        return {"body": json.dumps({"method": "revoke", "arguments": arguments}), "properties": {}}

    assert revokes_in("celery.pidbox", body(task_id="t1", terminate=True)) == [
        ("task", "", "t1"), ("terminate", "", "t1"),
    ]
    assert revokes_in("celery.pidbox", body(task_id=["t2"])) == [("task", "", "t2")]


def test_cli_cancel_stops_a_running_job_as_the_job_api_does(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """``jobtable cancel UUID`` of a running job: its worker stops it, the
    command waits for the CANCELLED result (issue 15)."""
    from click.testing import CliRunner

    from jobtable.cli import main

    log = str(tmp_path / "log")
    slow = Log(log, "slow", sleep=60).run_in_worker(retries=3)
    assert slow is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        wait_for(lambda: lines(log) == ["slow"], what="the slow job to start")
        started = time.monotonic()
        result = CliRunner().invoke(main, ["cancel", slow.uuid, "--timeout", "20"])
        took = time.monotonic() - started
    finally:
        out = stop(proc)
    assert result.exit_code == 0, (result.output, out)
    assert f"Cancelled {slow.uuid} (stopped while running)." in result.output
    assert took < 10, took
    (row,) = results(slow.uuid)  # not retried despite retries=3
    assert row.status == tables.CANCELLED and row.error_type == "jobtable.JobCancelled" and not row.retried
    assert requests() == []


def test_cli_cancel_past_its_timeout_fails_and_the_cancel_stays_asked(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """A job deaf to the cancel outlives ``--timeout``: the command fails
    naming it; the worker still ends the job CANCELLED later (the wait,
    like ``request.cancel(timeout=)``, only bounds how long it waits)."""
    from click.testing import CliRunner

    from jobtable.cli import main

    log = str(tmp_path / "log")
    deaf = DeafToCancel(log, "deaf").run_in_worker()
    assert deaf is not None
    proc = start_worker(worker_env(subprocess_env, worker_timeout_grace=3), "--max-processes", "1")
    try:
        wait_for(lambda: lines(log) == ["deaf"], what="the job to start")
        result = CliRunner().invoke(main, ["cancel", deaf.uuid, "--timeout", "0.5"])
        assert result.exit_code == 1, result.output
        assert "has not stopped within 0.5 s; the cancel stays asked" in result.output
        wait_for(lambda: results(deaf.uuid), what="the deaf job killed and recorded")
    finally:
        out = stop(proc)
    (row,) = results(deaf.uuid)
    assert row.status == tables.CANCELLED, out
