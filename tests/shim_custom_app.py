"""A shim app as a Django + Celery project writes it: ``app.Task =
CustomTask`` with handler hooks, ``task_queues`` as kombu Queues and
``worker_concurrency``; one task is defined before ``app.Task`` is set (it
is moved onto the custom base).  Handlers append to SHIM_CUSTOM_LOG."""

from __future__ import annotations

import os
from typing import Any

from kombu import Exchange, Queue

from jobtable.shim import Celery, Task, shared_task

app = Celery("shim_custom")


def note(line: str) -> None:
    path = os.environ.get("SHIM_CUSTOM_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


@shared_task
def defined_early(x: int) -> int:
    raise ValueError(f"early {x}")


class CustomTask(Task):
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        note(f"on_success {self.name} {retval}")

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        note(f"on_failure {self.name} {exc}")

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        note(f"after_return {self.name} {status}")


app.Task = CustomTask
app.conf.task_queues = [Queue("custom_q", Exchange("custom_x"), routing_key="custom.#"), Queue("celery")]
app.conf.worker_concurrency = 1


@shared_task(queue="custom_q")
def double(x: int) -> int:
    return 2 * x


@app.task
def fail(message: str) -> None:
    raise KeyError(message)
