"""--reload restarts the worker when a .py file changes; --pool threads
enforces timeouts too; polling alone (no LISTEN) still runs jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from jobtable.db import tables

from tests.worker_jobs import Noop, Spin, results, start_worker, stop, wait_for, worker_env


def test_reload_restarts_on_py_change(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "reload_app.py").write_text("from tests.worker_jobs import Noop  # noqa\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "reload_app", "worker", "--reload",
         "--max-processes", "1"],
        env=worker_env(subprocess_env), cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    starts = lambda: sum("consuming default" in line for line in output)  # noqa: E731
    try:
        wait_for(starts, timeout=30, what="the worker to start")
        (tmp_path / "reload_app.py").write_text("from tests.worker_jobs import Noop  # noqa\n# changed\n")
        wait_for(lambda: starts() >= 2, timeout=30, what="the worker to restart")
        (tmp_path / "notes.txt").write_text("not watched")
        job = Noop().run_in_worker()
        assert job is not None
        wait_for(lambda: results(job.uuid), what="a job after the restart")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert any("restarting" in line.lower() or "changes detected" in line.lower() for line in output), output


def test_threads_pool_timeout(db_url: str, subprocess_env: dict[str, str]) -> None:
    job = Spin().run_in_worker()
    ok = Noop().run_in_worker()
    assert job and ok
    proc = start_worker(worker_env(subprocess_env), "--pool", "threads", "--max-processes", "2")
    try:
        (row,) = wait_for(lambda: results(job.uuid), what="the timed-out job")
        wait_for(lambda: results(ok.uuid), what="the other job")
    finally:
        stop(proc)
    assert row.status == tables.ERRORED and row.error_type.endswith("JobTimeout")


def test_polling_without_listen(db_url: str, subprocess_env: dict[str, str]) -> None:
    env = worker_env(subprocess_env, worker_listen=0, worker_poll_interval_ms=100)
    proc = start_worker(env, "--max-processes", "1")
    try:
        job = Noop().run_in_worker()
        assert job is not None
        wait_for(lambda: results(job.uuid), what="a polled job")
    finally:
        stop(proc)
