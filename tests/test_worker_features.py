"""DeferJob, expiry, unknown jobs, concurrency keys, middleware, delayed
jobs, stats, max jobs per process, result retention."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from jobtable import run_in_worker_many
from jobtable.db import engine as db_engine
from jobtable.db import clock, enqueue_sql, tables
from jobtable.messages import row_values, task_message

from tests.worker_jobs import (
    DeferOnce,
    KeyedLog,
    Log,
    Noop,
    lines,
    query,
    requests,
    results,
    run_burst,
    start_worker,
    stop,
    wait_for,
    worker_env,
)
from tests.conftest import ALL_DIALECTS, BEHIND_PGBOUNCER

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def _insert_message(task_name: str, *, expires: object = None, body: str | None = None) -> str:
    now = clock.utcnow()
    envelope = task_message(
        task_name=task_name, task_id=f"t-{task_name}", args=[], kwargs={}, queue="default", priority=0,
        eta=None, expires=expires,  # type: ignore[arg-type]
    )
    if body is not None:
        envelope["body"] = body
    with db_engine.connect() as conn, conn.begin():
        enqueue_sql.insert_requests(conn, [row_values(envelope, "default", now)])
    return envelope["headers"]["id"]


def test_defer_job(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    job = DeferOnce(str(tmp_path / "marker"), delay=0.5).run_in_worker()
    assert job is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        wait_for(lambda: len(results(job.uuid)) == 2, what="the deferred run")
    finally:
        stop(proc)
    deferred, done = results(job.uuid)
    assert deferred.status == tables.DEFERRED and deferred.retried
    assert done.status == tables.SUCCESSFUL and json.loads(done.return_value) == "after defer"
    assert done.attempt == 2 and done.retries == 1  # a deferral is not a retry
    assert done.started_at - deferred.ended_at >= timedelta(seconds=0.45)


def test_expired_unknown_and_undecodable(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    expired = _insert_message("tests.worker_jobs.Noop", expires=clock.utcnow() - timedelta(seconds=1))
    unknown = _insert_message("nobody.registered.This")
    broken = _insert_message("tests.worker_jobs.Noop.broken", body="not json")
    after = Log(str(tmp_path / "log"), "after").run_in_worker()
    assert after is not None
    run_burst(worker_env(subprocess_env), "--max-processes", "1")
    (row,) = results(expired)
    assert row.status == tables.CANCELLED and "expired" in row.error_message
    (row,) = results(unknown)
    assert row.status == tables.ERRORED and "Unknown job 'nobody.registered.This'" in row.error_message
    (row,) = results(broken)
    assert row.status == tables.DEAD_LETTER and row.error_type == "UndecodableMessage"
    assert "Dead letter" in row.error_message and "jobtable retry" in row.error_message
    assert results(after.uuid)[0].status == tables.SUCCESSFUL
    assert requests() == []


def test_concurrency_key_released_after_finish(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    assert KeyedLog(log, "k1").run_in_worker() is not None
    assert KeyedLog(log, "k1").run_in_worker() is None  # held while pending
    run_burst(worker_env(subprocess_env), "--max-processes", "1")
    assert KeyedLog(log, "k1").run_in_worker() is not None  # released
    run_burst(worker_env(subprocess_env), "--max-processes", "1")
    assert lines(log) == ["k1", "k1"]


def test_middleware_wraps_each_job(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    mw_log = tmp_path / "mw.log"
    env = worker_env(
        subprocess_env,
        middleware=["jobtable.middleware.LogContextMiddleware", "tests.worker_jobs.RecordingMiddleware"],
    )
    env["WORKER_TEST_MIDDLEWARE_LOG"] = str(mw_log)
    job = Log(str(tmp_path / "log"), "hello").run_in_worker()
    assert job is not None
    run_burst(env, "--max-processes", "1")
    assert lines(mw_log) == [f"before tests.worker_jobs.Log {job.uuid} 1", f"after {job.uuid} hello"]


@BEHIND_PGBOUNCER
def test_delayed_job_not_run_early(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    later = Log(log, "later").run_in_worker(delay=2, priority=100)
    now = Log(log, "now").run_in_worker()
    assert later and now
    assert [r.state for r in requests()] == [tables.SCHEDULED, tables.PENDING]
    # A 30 s poll interval: the delayed job can only start on time through
    # the worker's own timer for the next due job.
    proc = start_worker(worker_env(subprocess_env, worker_poll_interval_ms=30000), "--max-processes", "1")
    try:
        (first,) = wait_for(lambda: results(now.uuid), what="the due job")
        (row,) = wait_for(lambda: results(later.uuid), timeout=45, what="the delayed job")
    finally:
        stop(proc)
    # Not before it was due, even with a higher priority than the due job.
    assert row.started_at >= later.start_at
    if first.started_at < later.start_at:
        assert lines(log)[0] == "now"
    # On time: within 5 s of the later of its due time and the moment the
    # worker was running jobs (a loaded machine may start the worker after
    # the job came due; the 30 s poll would miss this bound either way).
    assert row.started_at - max(later.start_at, first.started_at) < timedelta(seconds=5)


def test_stats_and_max_jobs_per_process(db_url: str, subprocess_env: dict[str, str]) -> None:
    run_in_worker_many([Noop() for _ in range(30)])
    proc = start_worker(
        worker_env(subprocess_env), "--max-processes", "1", "--max-jobs-per-process", "10", "--stats-every", "0.2"
    )
    try:
        wait_for(lambda: len(results()) == 30, what="all jobs")
        wait_for(lambda: len(query("SELECT id FROM jobtable_worker")) == 1, what="one live member")
    finally:
        out = stop(proc)
    workers = {r.worker_id for r in results()}
    assert len(workers) == 3  # replaced after every 10 jobs
    assert "stats: queues=default pending=" in out and "jobs/s" in out
    # Once each: logged (timestamp, level, pid), not printed bare beside it.
    stats_lines = [line for line in out.splitlines() if "stats: queues=" in line]
    assert stats_lines and all(" INFO [" in line and "jobtable.stats: stats:" in line for line in stats_lines), out
    assert query("SELECT id FROM jobtable_worker") == []


def test_old_results_are_cleared(db_url: str, subprocess_env: dict[str, str]) -> None:
    job = Noop().run_in_worker()
    assert job is not None
    run_burst(worker_env(subprocess_env), "--max-processes", "1")
    with db_engine.connect() as conn, conn.begin():
        conn.execute(
            tables.result.update().values(ended_at=clock.utcnow() - timedelta(seconds=120))
        )
    fresh = Noop().run_in_worker()
    assert fresh is not None
    proc = start_worker(worker_env(subprocess_env, results_retention=60), "--max-processes", "1")
    try:
        wait_for(lambda: [r.task_id for r in results()] == [fresh.uuid], what="the old result to go")
    finally:
        stop(proc)


@BEHIND_PGBOUNCER
def test_worker_runs_the_scheduler(db_url: str, subprocess_env: dict[str, str]) -> None:
    env = worker_env(subprocess_env, schedule=[["tests.worker_jobs.Noop", "@daily"]])
    proc = start_worker(env, "--max-processes", "1")
    try:
        # The first tick writes the entry's ledger row.
        rows = wait_for(lambda: query("SELECT name FROM jobtable_schedule"), what="the schedule ledger")
    finally:
        out = stop(proc)
    assert "Noop" in rows[0].name, out
    assert "Scheduling 1 entry" in out
