"""Exactly one result per attempt, and each job run once, with several
worker processes racing for thousands of jobs while more are enqueued."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

from jobtable import run_in_worker_many
from jobtable.db import tables

from tests.worker_jobs import Log, lines, requests, results, start_worker, stop, wait_for, worker_env

JOBS = 3000


def test_many_workers_each_job_once(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    # A generous lost_after: on a loaded machine a SQLite heartbeat can wait
    # seconds for the write lock, and a live worker must not look dead here.
    env = worker_env(subprocess_env, worker_lost_after=30)
    first = run_in_worker_many([Log(log, f"a{i}") for i in range(JOBS // 2)])
    workers = [start_worker(env, "--max-processes", "2", "--max-pending-per-process", "50") for _ in range(3)]
    try:
        # More jobs arrive while the workers drain, in small and larger batches.
        second = []
        for start in range(0, JOBS // 2, 100):
            second += run_in_worker_many([Log(log, f"b{i}") for i in range(start, start + 100)])
        wait_for(lambda: len(lines(log)) >= JOBS, timeout=60, what="every job to run")
        wait_for(lambda: not requests(), timeout=30, what="the queue to empty")
    finally:
        outputs = [stop(proc, signal.SIGTERM) for proc in workers]
    counts = collections.Counter(lines(log))
    assert len(counts) == JOBS, outputs
    assert max(counts.values()) == 1, [tag for tag, n in counts.items() if n > 1][:10]
    rows = results()
    assert len(rows) == JOBS
    assert {r.status for r in rows} == {tables.SUCCESSFUL}
    assert {r.task_id for r in rows} == {j.uuid for j in first + second if j is not None}
    # Several workers took part.
    assert len({r.worker_id.split(":")[2] for r in rows}) >= 2
