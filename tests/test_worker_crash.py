"""Nothing lost: killed workers, members dying mid-job, timeouts, and the
guarded completion that keeps a LOST job from writing a second result."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, finish_sql, rescue_sql, tables

from tests.conftest import ALL_DIALECTS, BEHIND_PGBOUNCER
from tests.worker_jobs import (
    ExitOnce,
    Log,
    Spin,
    Stuck,
    lines,
    requests,
    results,
    start_worker,
    stop,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


@BEHIND_PGBOUNCER
def test_kill_9_worker_jobs_lost_and_retried(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    env = worker_env(subprocess_env, worker_lost_after=2)
    job = Log(log, "slow", sleep=30).run_in_worker(retries=1)
    assert job is not None
    first = start_worker(env, "--max-processes", "1")
    try:
        wait_for(lambda: lines(log) == ["slow"], what="the job to start")
        os.kill(first.pid, signal.SIGKILL)  # members die with their supervisor
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    # Another worker notices the silence and records the job LOST, then retries it.
    second = start_worker(env, "--max-processes", "1")
    try:
        lost = wait_for(lambda: results(job.uuid), timeout=45, what="the LOST result")
        assert lost[0].status == tables.LOST and lost[0].attempt == 1 and lost[0].retried
        # Known at once (the lock, or the pid on SQLite), or after the silence.
        assert "died" in lost[0].error_message or "heartbeat" in lost[0].error_message
        wait_for(lambda: len(lines(log)) == 2, timeout=45, what="the retry to start")
    finally:
        stop(second, signal.SIGKILL)
    assert [r.attempt for r in requests()] == [2]


def test_member_dying_mid_job_is_lost_and_worker_goes_on(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    crash = ExitOnce(str(tmp_path / "marker")).run_in_worker(retries=1)
    no_retry = ExitOnce(str(tmp_path / "marker2")).run_in_worker()
    assert crash and no_retry
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        wait_for(lambda: len(results(crash.uuid)) == 2, what="the crash and its retry")
        wait_for(lambda: results(no_retry.uuid), what="the second crash")
        # The worker replaced its member and still runs jobs.
        after = Log(log, "after").run_in_worker()
        assert after is not None
        wait_for(lambda: results(after.uuid), what="a job after the crashes")
    finally:
        out = stop(proc)
    lost, retried = results(crash.uuid)
    assert lost.status == tables.LOST and lost.retried and "code 13" in lost.error_message
    assert retried.status == tables.SUCCESSFUL and retried.attempt == 2
    (only,) = results(no_retry.uuid)
    assert only.status == tables.LOST and not only.retried
    assert "exited with code 13" in out
    assert requests() == []


def test_timeout_stops_python_code(db_url: str, subprocess_env: dict[str, str]) -> None:
    job = Spin().run_in_worker()
    assert job is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        (row,) = wait_for(lambda: results(job.uuid), what="the timed-out result")
    finally:
        stop(proc)
    assert row.status == tables.ERRORED
    assert row.error_type == "jobtable.worker.errors.JobTimeout"
    assert "timeout of 1 seconds" in row.error_message


def test_job_stuck_past_timeout_and_grace_is_killed(db_url: str, subprocess_env: dict[str, str]) -> None:
    job = Stuck().run_in_worker()
    assert job is not None
    proc = start_worker(worker_env(subprocess_env, worker_timeout_grace=1), "--max-processes", "1")
    try:
        (row,) = wait_for(lambda: results(job.uuid), what="the killed job's result")
        # The member is replaced: another job still runs.
        ok = Log("/dev/null", "ok").run_in_worker()
        assert ok is not None
        wait_for(lambda: results(ok.uuid), what="a job after the kill")
    finally:
        stop(proc)
    assert row.status == tables.LOST
    assert "timeout" in row.error_message


def test_completion_after_lost_writes_nothing(db_url: str) -> None:
    job = Log("/dev/null", "x").run_in_worker(retries=1)
    assert job is not None
    now = clock.utcnow()
    with db_engine.connect() as conn, conn.begin():
        (row,) = claims_sql.claim(conn, ["default"], 10, worker_id="native:a", now=now)
    # Rescue takes the row away (its worker looked dead) ...
    with db_engine.connect() as conn, conn.begin():
        lost = rescue_sql.lose(conn, "native:a", None, now, message="gone")
    assert [r.id for r in lost] == [row.id]
    # ... and the slow worker's late completion is refused.
    outcome = finish_sql.Outcome(row, tables.SUCCESSFUL, now, {"return_value": "1"})
    with db_engine.connect() as conn, conn.begin():
        written = finish_sql.finish(conn, "native:a", [outcome], now)
    assert written == []
    rows = results(job.uuid)
    assert [(r.attempt, r.status, r.retried) for r in rows] == [(1, tables.LOST, True)]
    # The retry is still there to run, once.
    assert [(r.attempt, r.state) for r in requests()] == [(2, tables.PENDING)]
    # A completion by a worker that does not hold the row is refused too.
    with db_engine.connect() as conn, conn.begin():
        (retry,) = claims_sql.claim(conn, ["default"], 10, worker_id="native:b", now=now)
        assert finish_sql.finish(conn, "native:a", [finish_sql.Outcome(retry, tables.SUCCESSFUL, now, {})], now) == []
        assert len(finish_sql.finish(conn, "native:b", [finish_sql.Outcome(retry, tables.SUCCESSFUL, now, {})], now)) == 1
    assert [r.status for r in results(job.uuid)] == [tables.LOST, tables.SUCCESSFUL]
