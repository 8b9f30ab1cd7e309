"""Wake-ups: a waiting worker starts a new job within milliseconds (NOTIFY
on PostgreSQL, data-version polling on SQLite) even with a long poll
interval; `jobtable retry` and `jobtable cancel` against a running worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from jobtable.db import engine as db_engine
from jobtable.db import tables
from jobtable.db.notify import Listener

from tests.conftest import ALL_DIALECTS, BEHIND_PGBOUNCER
from tests.worker_jobs import (
    ROOT,
    Boom,
    Gate,
    Log,
    Noop,
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
def test_listener_wakes_on_insert_for_its_queues(db_url: str) -> None:
    listener = Listener.create(db_engine.get_engine(), ["wanted"])
    try:
        # Settle (SQLite: the first version read may wake it once); with
        # nothing inserted it must then go quiet, not wake again and again.
        wait_for(lambda: listener.wait(0.05) is False, timeout=5, what="a quiet listener")
        started = time.monotonic()
        threading.Timer(0.1, lambda: Noop().run_in_worker(queue="wanted")).start()
        assert listener.wait(5.0) is True
        assert time.monotonic() - started < 2.0
        # interrupt() ends a wait at once (signal handlers use it).
        threading.Timer(0.05, listener.interrupt).start()
        started = time.monotonic()
        assert listener.wait(5.0) is True
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()


@BEHIND_PGBOUNCER
def test_idle_worker_wakes_fast(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    # A 30 s poll interval: only a wake-up can make these fast.
    env = worker_env(subprocess_env, worker_poll_interval_ms=30000)
    proc = start_worker(env, "--max-processes", "1")
    try:
        warm = Noop().run_in_worker()
        assert warm is not None
        wait_for(lambda: results(warm.uuid), what="the worker to be up")
        delays = []
        for i in range(10):
            job = Log(str(tmp_path / "log"), str(i)).run_in_worker()
            assert job is not None
            (row,) = wait_for(lambda j=job: results(j.uuid), timeout=10, what="a woken job")
            delays.append((row.started_at - job.created_at).total_seconds())
    finally:
        stop(proc)
    delays.sort()
    # Typically ~2-5 ms; the bound leaves room for a loaded CI machine while
    # staying far below the 30 s poll interval.
    assert delays[len(delays) // 2] < 0.5, delays


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from jobtable.cli import main; main()", *args],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60,
    )


def test_retry_and_cancel_against_running_worker(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    env = worker_env(subprocess_env)
    failed = Boom().run_in_worker()
    later = Log(str(tmp_path / "log"), "later").run_in_worker(delay=timedelta(hours=1))
    assert failed and later
    proc = start_worker(env, "--max-processes", "1")
    try:
        wait_for(lambda: results(failed.uuid), what="the failure")
        retried = _cli(env, "retry", failed.uuid)
        assert retried.returncode == 0, retried.stderr
        wait_for(lambda: len(results(failed.uuid)) == 2, what="the retried attempt")
        cancelled = _cli(env, "cancel", later.uuid)
        assert cancelled.returncode == 0, cancelled.stderr
        (row,) = wait_for(lambda: results(later.uuid), what="the cancelled result")
        assert row.status == tables.CANCELLED
        # A running job is stopped by its worker: the command waits for it.
        slow = Gate(str(tmp_path / "slow"), str(tmp_path / "release")).run_in_worker()
        assert slow is not None
        wait_for(lambda: lines(tmp_path / "slow"), what="the slow job to start")
        stopped = _cli(env, "cancel", slow.uuid)
        assert stopped.returncode == 0 and "stopped while running" in stopped.stdout, stopped.stderr
        (row,) = results(slow.uuid)
        assert row.status == tables.CANCELLED
    finally:
        stop(proc)
    first, second = results(failed.uuid)
    assert first.retried and second.attempt == 2 and second.status == tables.ERRORED
    assert lines(tmp_path / "log") == []
    assert requests() == []
