"""The task module under test: ordinary Celery task code.

It is written against the Celery API only (``app.task``, ``bind=True``,
``self.request``, ``self.retry``); ``app`` comes from ``compat_tests.app``,
which is Celery's ``Celery`` or ``jobtable.shim.Celery`` -- this file is the
same source in all three modes.

Tasks that must leave a trace append one line to the file they are given
(``path``), so the tests can count how often, when and where each really ran.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from compat_tests.app import app


class PaymentDeclined(Exception):
    """A project's own exception type: get() must raise it, not a stand-in."""


def append(path: str, *parts: Any) -> None:
    line = " ".join(str(p) for p in parts) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def who() -> str:
    """Which worker runs this: set per worker process by the tests."""
    return os.environ.get("COMPAT_WORKER", f"{socket.gethostname()}:{os.getpid()}")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task
def echo(value: Any) -> Any:
    return value


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def decline(amount: int) -> None:
    raise PaymentDeclined(f"card declined for {amount}")


def wait_at_gate(gate: str | None) -> None:
    """With ``gate`` (a path): note who is waiting in ``gate + ".waiting"``,
    then wait for the test to create ``gate`` -- so a test can see every
    worker holding a message before any finishes."""
    if gate is None:
        return
    append(gate + ".waiting", who())
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


@app.task(bind=True)
def record(self: Any, path: str, tag: str, gate: str | None = None) -> str:
    wait_at_gate(gate)
    append(path, tag, self.request.retries, time.time(), who())
    return tag


@app.task(bind=True, max_retries=3)
def flaky(self: Any, path: str, failures: int, countdown: float) -> int:
    """Fails ``failures`` times, each time retrying after ``countdown`` s."""
    append(path, self.request.id, self.request.retries, time.time())
    if self.request.retries < failures:
        raise self.retry(countdown=countdown, exc=ConnectionError(f"attempt {self.request.retries + 1} failed"))
    return int(self.request.retries)


@app.task(bind=True, max_retries=1)
def always_retry(self: Any, path: str) -> None:
    append(path, self.request.id, self.request.retries, time.time())
    raise self.retry(countdown=0, exc=KeyError("still broken"))


@app.task(bind=True, max_retries=5)
def retry_later(self: Any) -> None:
    raise self.retry(countdown=3600)


@app.task(bind=True)
def hold(self: Any, path: str, release: str) -> str:
    """Runs until ``release`` exists (a task that holds a concurrency key)."""
    append(path, "hold", self.request.id, time.time(), who())
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return str(self.request.id)
