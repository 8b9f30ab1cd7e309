"""Waiting for a condition with a deadline (the one polling loop of the test
suites: no fixed sleeps; importable by worker processes too), and stopping
the worker processes tests start."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def terminate(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Stop a worker process as its supervisor would (SIGTERM: warm
    shutdown), killing it if it has not exited after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
