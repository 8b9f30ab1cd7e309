"""Jobs and helpers for the worker tests (importable by worker processes).

Jobs that must leave a trace append one line to a file (O_APPEND writes of a
short line are atomic), so tests can count how often each one really ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from jobtable import Job, register_job
from jobtable.db import engine as db_engine
from jobtable.db import tables
from jobtable.middleware import JobMiddleware, JobRun
from jobtable.worker import DeferJob
from tests import polling

ROOT = Path(__file__).resolve().parent.parent


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


@register_job
class Noop(Job):
    def run(self) -> None:
        return None


@register_job
class Log(Job):
    """Appends ``tag`` to ``path`` and returns it."""

    def __init__(self, path: str, tag: str, sleep: float = 0.0) -> None:
        self.path, self.tag, self.sleep = path, tag, sleep

    def run(self) -> str:
        append(self.path, self.tag)
        if self.sleep:
            time.sleep(self.sleep)
        return self.tag


@register_job
class Add(Job):
    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def run(self) -> dict[str, int]:
        return {"sum": self.a + self.b}


@register_job
class Boom(Job):
    """Always fails; retries after 0.3 s."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def calculate_retry_delay(self, attempt: int) -> float:
        return 0.3

    def run(self) -> None:
        if self.path:
            append(self.path, f"{time.time()}")
        raise ValueError("boom")


@register_job
class ExitOnce(Job):
    """Kills its own process the first time (marker file), succeeds after."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def run(self) -> str:
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("x")
            os._exit(13)
        return "survived"


@register_job
class Spin(Job):
    """A Python busy loop that a 1-second timeout stops."""

    def default_timeout(self) -> int:
        return 1

    def run(self) -> None:
        while True:
            pass


@register_job
class Stuck(Job):
    """Blocks SIGALRM and sleeps: only the supervisor can stop it."""

    def default_timeout(self) -> int:
        return 1

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)


@register_job
class Naps(Job):
    """Writes its tag, then naps in short steps for up to a minute: Python
    code between the naps, where a thread's async exception lands."""

    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def run(self) -> None:
        append(self.path, self.tag)
        for _ in range(1200):
            time.sleep(0.05)


@register_job
class DeafToCancel(Job):
    """Writes its tag, then blocks the cancel signal and sleeps: only the
    supervisor's kill stops it (worker/cancels.py)."""

    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        append(self.path, self.tag)
        time.sleep(60)


@register_job
class DeferOnce(Job):
    def __init__(self, marker: str, delay: float = 0.5) -> None:
        self.marker, self.delay = marker, delay

    def run(self) -> str:
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("x")
            raise DeferJob(delay=self.delay)
        return "after defer"


@register_job
class Gate(Job):
    """Appends ``started`` to ``path``, then waits until ``release`` exists."""

    def __init__(self, path: str, release: str) -> None:
        self.path, self.release = path, release

    def run(self) -> str:
        append(self.path, "started")
        deadline = time.monotonic() + 120
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "released"


@register_job
class KeyedLog(Job):
    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = path, key

    def default_concurrency_key(self) -> str:
        return self.key

    def run(self) -> None:
        append(self.path, self.key)


class RecordingMiddleware(JobMiddleware):
    """Writes before/after lines to $WORKER_TEST_MIDDLEWARE_LOG."""

    def process_job(self, job_run: JobRun) -> Any:
        path = os.environ["WORKER_TEST_MIDDLEWARE_LOG"]
        append(path, f"before {job_run.job_name} {job_run.uuid} {job_run.attempt}")
        value = self.run_job(job_run)
        append(path, f"after {job_run.uuid} {value}")
        return value


# -- helpers -------------------------------------------------------------------


def start_worker(env: dict[str, str], *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``jobtable --app tests.worker_jobs worker ARGS`` as a child process."""
    return subprocess.Popen(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.worker_jobs", "worker", *args],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_burst(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    """Run a worker until no job is due; returns its output."""
    proc = start_worker(env, "--burst", *args)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 45, what: str = "condition") -> Any:
    """``polling.wait_for`` with the longer default worker tests need."""
    return polling.wait_for(predicate, timeout, what=what)


def _read() -> Any:
    # Reads do not take SQLite's write lock (as jobtable's own reads): a
    # worker the test froze (SIGSTOP) may hold it.
    return db_engine.get_engine().connect().execution_options(sqlite_begin="DEFERRED")


def query(sql: str, **params: Any) -> list[Any]:
    with _read() as conn:
        return list(conn.execute(text(sql), params))


def results(task_id: str | None = None) -> list[Any]:
    """Result rows (typed: aware datetimes on both dialects)."""
    t = tables.result
    stmt = select(t).order_by(t.c.id)
    if task_id is not None:
        stmt = select(t).where(t.c.task_id == task_id).order_by(t.c.attempt)
    with _read() as conn:
        return list(conn.execute(stmt))


def requests() -> list[Any]:
    t = tables.request
    with _read() as conn:
        return list(conn.execute(select(t).order_by(t.c.id)))


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"worker did not stop:\n{out}")
    return out


def worker_env(env: dict[str, str], **settings: Any) -> dict[str, str]:
    out = dict(env)
    out.setdefault("JOBTABLE_WORKER_LOST_AFTER", "2")
    out.setdefault("JOBTABLE_WORKER_SHUTDOWN_GRACE", "10")
    for key, value in settings.items():
        out[f"JOBTABLE_{key.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


@register_job
class SlowRetry(Job):
    """Appends to ``path``; a lost attempt is retried a minute later."""

    def __init__(self, path: str) -> None:
        self.path = path

    def calculate_retry_delay(self, attempt: int) -> Any:
        from datetime import timedelta

        return timedelta(seconds=60)

    def run(self) -> None:
        append(self.path, "slow")


@register_job
class BadRetry(Job):
    """Appends to ``path``; its retry delay raises (a rescue retries it at once)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def calculate_retry_delay(self, attempt: int) -> float:
        raise RuntimeError("no delay for you")

    def run(self) -> None:
        append(self.path, "bad-retry")
