"""--reload restarts the worker when a .py file changes; --pool threads
enforces timeouts too; polling alone (no LISTEN) still runs jobs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from jobtable.db import tables

from tests.worker_jobs import Noop, Spin, results, start_worker, stop, wait_for, worker_env

#: How long Ctrl-C may take to stop an idle reloading worker.  Past it the
#: test fails (and kills the group) rather than waiting for the reloader's
#: own SIGKILL fallback to end the worker.
STOP_BOUND = 15


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the reloader, the worker it runs
    and the worker's pool members), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            out.append(int(entry.name))
    return out


def test_reload_restarts_on_py_change(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """A .py change restarts the worker; Ctrl-C (SIGINT to the process
    group) then stops the reloader and the worker it runs: the worker
    shuts down by itself (its "stopped" line) and no process of the session
    is left -- not the reloader's SIGKILL after its own timeout."""
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
        supervisors = re.findall(r"jobtable worker (\d+): ", "".join(output))
        assert len(supervisors) == 2, output  # the first worker, then the restarted one
        running = int(supervisors[-1])
        assert running in _session_members(proc.pid), output
        # Ctrl-C: the terminal signals the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"--reload did not stop within {STOP_BOUND} s of SIGINT:\n{''.join(output)}")
        reader.join(timeout=10)
        text = "".join(output)
        assert code == 0, text
        assert f"jobtable worker {running} stopped." in text, text  # it stopped by itself, not SIGKILLed
        assert "SIGKILL" not in text, text
        wait_for(lambda: not _session_members(proc.pid), timeout=5, what="every process of the session to exit")
    finally:
        if proc.poll() is None or _session_members(proc.pid):
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
