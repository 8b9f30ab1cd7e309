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


@shared_task
def errback_new(request: Any, exc: BaseException, traceback: Any, path: str) -> None:
    """A "new-style" errback (Celery calls it in the failed task's worker)."""
    append(path, f"new {request.id} {type(exc).__name__}: {exc} tb={traceback is not None} pid={os.getpid()}")


@app.task(bind=True)
def errback_old(self: Any, task_id: str, path: str) -> None:
    """An "old-style" errback (bind=True): sent as a task, the failed task's id first."""
    append(path, f"old {task_id} parent={self.request.parent_id}")


@app.task(bind=True)
def progress(self: Any, gate: str) -> str:
    """Reports PROGRESS, then waits (up to 30 s) for the test to create ``gate``."""
    self.update_state(state="PROGRESS", meta={"done": 3, "total": 10})
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    self.update_state(state="PROGRESS", meta={"done": 10, "total": 10})
    return "finished"


@shared_task
def double(x: int) -> int:
    return x * 2


@app.task(bind=True)
def grow(self: Any, x: int) -> int:
    """A chord part that adds another part: add(x, 100)."""
    self.add_to_chord(add.s(x, 100))
    return x


@app.task(bind=True)
def replaced(self: Any, x: int, chained: bool = False) -> Any:
    """Replaced by add(x, 1) (or a chain add(x, 1) | double) under its own id."""
    if chained:
        raise self.replace(add.s(x, 1) | double.s())
    raise self.replace(add.s(x, 1))


def _die(path: str) -> None:
    """Note the run, then kill this worker process (as an OOM kill would)."""
    import signal

    append(path, str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def die_once(path: str) -> str:
    """Kills its process on its first run only: requeued once, then it succeeds."""
    if not os.path.exists(path):
        _die(path)
    return "survived"


@shared_task(acks_late=True, reject_on_worker_lost=True)
def die_always(path: str) -> None:
    _die(path)


@shared_task(acks_late=True)
def die_plain(path: str) -> None:
    """acks_late alone: a lost run is not requeued (Celery's default)."""
    _die(path)
