"""Celery-style tasks for the shim tests, written against ``jobtable.shim``
only (importable with Celery uninstalled).  Worker processes import this
module through ``--app tests.shim_tasks``.

Tasks that must leave a trace append one line to a file, so tests can count
how often (and when) each one really ran.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobtable.shim import Celery, shared_task

app = Celery("shim_tests")


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@shared_task
def add(a: int, b: int) -> int:
    return a + b


@shared_task
def total(values: list[int]) -> int:
    return sum(values)


@shared_task
def echo(value: Any) -> Any:
    return value


@shared_task
def record(path: str, tag: str) -> str:
    append(path, tag)
    return tag


@shared_task
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True, name="shim.whoami", queue="other")
def whoami(self: Any, tag: str) -> dict[str, Any]:
    request = self.request
    return {
        "id": request.id,
        "task": request.task,
        "retries": request.retries,
        "args": list(request.args),
        "kwargs": request.kwargs,
        "root_id": request.root_id,
        "queue": request.delivery_info.get("routing_key"),
        "tag": tag,
    }


@app.task(bind=True, max_retries=2, default_retry_delay=0.2)
def flaky(self: Any, path: str, succeed_at: int) -> int:
    """Retries (same id) until ``request.retries == succeed_at``."""
    append(path, f"{self.request.id} {self.request.retries} {time.time()}")
    if self.request.retries < succeed_at:
        raise self.retry(exc=ValueError(f"flaky {self.request.retries}"))
    return int(self.request.retries)


@app.task(bind=True)
def retry_without_exc(self: Any, path: str) -> None:
    append(path, str(self.request.retries))
    raise self.retry(countdown=0, max_retries=1)


@app.task(autoretry_for=(KeyError,), retry_backoff=1, retry_backoff_max=1, retry_jitter=False, max_retries=2)
def auto(path: str) -> None:
    append(path, f"{time.time()}")
    raise KeyError("missing")


@app.task(autoretry_for=(KeyError,), retry_kwargs={"max_retries": 1, "countdown": 0})
def auto_kwargs(path: str) -> None:
    append(path, "x")
    raise KeyError("again")


@app.task(time_limit=1)
def sleepy() -> None:
    time.sleep(30)
