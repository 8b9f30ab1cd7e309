"""A shim app with Celery-style signal handlers, for tests/test_shim_signals.py.

Each handler appends one JSON line to the file named by SHIM_SIGNAL_LOG
(the worker's members and supervisor write to it), so the test reads which
signals fired, in which process, with which arguments.  Written against
``jobtable.shim`` only, as a project that had ``from celery.signals import
...`` would be after the import swap."""

from __future__ import annotations

import json
import os
from typing import Any

from jobtable.shim import Celery, shared_task, task_failure
from jobtable.shim.signals import (
    after_task_publish,
    before_task_publish,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

app = Celery("shim_signals")


def note(signal: str, **fields: Any) -> None:
    path = os.environ.get("SHIM_SIGNAL_LOG")
    if not path:
        return
    line = json.dumps({"signal": signal, "pid": os.getpid(), **fields}, default=repr)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@shared_task
def sig_add(a: int, b: int) -> int:
    return a + b


@shared_task
def sig_boom(message: str) -> None:
    raise ValueError(message)


@shared_task(bind=True, max_retries=1, default_retry_delay=0)
def sig_retry_once(self: Any) -> int:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("first"))
    return self.request.retries


@shared_task
def sig_linger(path: str) -> None:
    """Runs until it is terminated (30 s at most), after noting it started."""
    import time

    note("linger_started", path=path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.02)


@task_revoked.connect
def on_revoked(
    sender: Any = None, request: Any = None, terminated: Any = None, signum: Any = None, expired: Any = None, **rest: Any
) -> None:
    note(
        "task_revoked", task=sender.name, task_id=request.id, terminated=terminated, signum=signum, expired=expired
    )


@task_prerun.connect
def on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, args: Any = None, kwargs: Any = None, **rest: Any) -> None:
    note("task_prerun", task=task.name, same=sender is task, task_id=task_id, args=list(args), kwargs=kwargs)


@task_postrun.connect
def on_postrun(sender: Any = None, task_id: str | None = None, retval: Any = None, state: str | None = None, **rest: Any) -> None:
    note("task_postrun", task=sender.name, task_id=task_id, retval=retval, state=state)


@task_success.connect
def on_success(sender: Any = None, result: Any = None, runtime: float | None = None, **rest: Any) -> None:
    note("task_success", task=sender.name, result=result, runtime_ok=isinstance(runtime, float) and runtime >= 0)


@task_failure.connect
def on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, args: Any = None,
    kwargs: Any = None, traceback: Any = None, einfo: Any = None, **rest: Any,
) -> None:
    note(
        "task_failure", task=sender.name, task_id=task_id, exception=f"{type(exception).__name__}: {exception}",
        args=list(args), has_traceback=traceback is not None, einfo_has_text="ValueError" in str(einfo),
    )


# Celery's sender filtering: only failures of sig_boom.
@task_failure.connect(sender=sig_boom)
def on_boom_only(sender: Any = None, **rest: Any) -> None:
    note("task_failure[sig_boom]", task=sender.name)


@task_failure.connect(sender=sig_add)
def never(sender: Any = None, **rest: Any) -> None:
    note("task_failure[sig_add]", task=sender.name)


@task_retry.connect
def on_retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **rest: Any) -> None:
    note("task_retry", task=sender.name, task_id=request.id, retries=request.retries, reason=repr(reason))


@before_task_publish.connect
def on_before_publish(sender: Any = None, headers: Any = None, body: Any = None, routing_key: str | None = None, **rest: Any) -> None:
    # What Sentry's integration does: a header added here travels with the message.
    headers["x-from-signal"] = f"seen {sender}"
    note("before_task_publish", task=sender, task_id=headers["id"], routing_key=routing_key, args=list(body[0]))


@after_task_publish.connect
def on_after_publish(sender: Any = None, headers: Any = None, routing_key: str | None = None, **rest: Any) -> None:
    note("after_task_publish", task=sender, task_id=headers["id"], routing_key=routing_key)


@worker_process_init.connect
def on_process_init(sender: Any = None, **rest: Any) -> None:
    note("worker_process_init", sender=sender, ppid=os.getppid())


@worker_ready.connect
def on_ready(sender: Any = None, **rest: Any) -> None:
    note("worker_ready", hostname=sender.hostname, app=sender.app.main if sender.app else None)


@worker_shutdown.connect
def on_shutdown(sender: Any = None, **rest: Any) -> None:
    note("worker_shutdown", hostname=sender.hostname)
