"""SIGTERM/SIGINT: stop claiming, give back what has not started, let the
running job finish (grace), and stop at once on a second signal."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from jobtable import run_in_worker_many
from jobtable.db import tables

from tests.worker_jobs import Log, lines, query, requests, results, start_worker, stop, wait_for, worker_env
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def test_sigterm_gives_back_prefetched_jobs(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    jobs = run_in_worker_many([Log(log, str(i), sleep=1.0) for i in range(4)])
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1", "--max-pending-per-process", "4")
    wait_for(lambda: lines(log) == ["0"], what="the first job to start")
    # The member claimed all four in one batch.
    assert [r.state for r in requests()] == [tables.RUNNING] * 4
    out = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, out
    assert lines(log) == ["0"]  # nothing new started after the signal
    (done,) = results()
    assert done.task_id == jobs[0].uuid and done.status == tables.SUCCESSFUL  # finished within the grace
    left = requests()
    assert [r.task_id for r in left] == [j.uuid for j in jobs[1:]]
    assert {(r.state, r.worker_id, r.attempt) for r in left} == {(tables.PENDING, None, 1)}


def test_second_signal_stops_at_once(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    job = Log(log, "long", sleep=60).run_in_worker()
    assert job is not None
    proc = start_worker(worker_env(subprocess_env, worker_shutdown_grace=60), "--max-processes", "1")
    wait_for(lambda: lines(log) == ["long"], what="the job to start")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT" in (proc.stdout.readline() if proc.stdout else ""), what="the first signal to land")
    started = time.monotonic()
    out = stop(proc, signal.SIGINT, timeout=10)
    assert time.monotonic() - started < 5, out
    (row,) = results(job.uuid)
    assert row.status == tables.LOST and "at once" in row.error_message
    assert requests() == []


def test_grace_period_expiry_records_lost(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    job = Log(log, "long", sleep=60).run_in_worker(retries=1)
    assert job is not None
    proc = start_worker(worker_env(subprocess_env, worker_shutdown_grace=1), "--max-processes", "1")
    wait_for(lambda: lines(log) == ["long"], what="the job to start")
    stop(proc, signal.SIGTERM, timeout=15)
    (row,) = results(job.uuid)
    assert row.status == tables.LOST and row.retried and "within 1 s" in row.error_message
    assert [(r.attempt, r.state) for r in requests()] == [(2, tables.PENDING)], [(r.task_name, r.run_at, r.message) for r in requests()]


def test_threads_pool_second_signal(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    job = Log(log, "long", sleep=60).run_in_worker()
    assert job is not None
    proc = start_worker(worker_env(subprocess_env, worker_shutdown_grace=60), "--pool", "threads", "--max-processes", "1")
    wait_for(lambda: lines(log) == ["long"], what="the job to start")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM" in (proc.stdout.readline() if proc.stdout else ""), what="the first signal to land")
    out = stop(proc, signal.SIGTERM, timeout=15)
    (row,) = results(job.uuid)
    assert row.status == tables.LOST and "at once" in row.error_message, out
    assert requests() == []


@pytest.mark.parametrize("to_group", [False, True], ids=["supervisor", "process-group"])
def test_idle_members_stop_cleanly(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, to_group: bool
) -> None:
    """A normal shutdown is not a crash.  SIGTERM to the process group (what
    systemd, honcho or `kill -- -PGID` send) reaches each member twice -- the
    sender's and the supervisor's -- and the second used to make idle members
    exit 1, logged as "exited with code 1", and busy ones lose their job."""
    log = str(tmp_path / "log")
    job = Log(log, "busy", sleep=1.0).run_in_worker()
    assert job is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "3", start_new_session=True)
    wait_for(lambda: lines(log) == ["busy"], what="the job to start")
    wait_for(lambda: len(query("SELECT id FROM jobtable_worker")) == 3, what="three live members")
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)  # one signal to every process, the supervisor included
        out, _ = proc.communicate(timeout=30)
    else:
        out = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, out
    assert "exited with code" not in out and "was killed" not in out and "WARNING" not in out, out
    (row,) = results(job.uuid)
    assert row.status == tables.SUCCESSFUL  # the busy member finished its job within the grace
    assert query("SELECT id FROM jobtable_worker") == []
