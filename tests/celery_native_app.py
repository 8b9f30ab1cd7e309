"""A Celery app run by the native worker (``jobtable worker --celery-app
tests.celery_native_app:app``); broker and result backend are jobtable.

Environment: JOBTABLE_DATABASE_URL, JT_RECORD (a file where tasks and signal
handlers append one line each: ``kind task_id ...``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    celeryd_init,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

import jobtable  # noqa: F401  (registers the jobtable+ URLs with Kombu)
from jobtable.shim.celery_runner import use_concurrency_key_option
from tests.worker_jobs import append

URL = "jobtable+" + os.environ["JOBTABLE_DATABASE_URL"]
QUEUE = "celery_native"

app = Celery("jt_native", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"polling_interval": 0.5, "lease_seconds": 5, "eta_interval": 0.05},
    broker_connection_retry_on_startup=True,
    result_extended=True,
    # Not "celery": other tests' workers on the same database must not take these.
    task_default_queue=QUEUE,
    result_chord_join_timeout=10,
)

def task(*args: Any, **options: Any) -> Any:
    """``app.task`` with shared=False: the tests reload this module (one
    database per dialect), and shared tasks would register the previous
    module's functions into the new app."""
    return app.task(*args, shared=False, **options)


# @app.task(concurrency_key=...) puts the key in the messages this process sends.
use_concurrency_key_option()


def record(*parts: Any) -> None:
    append(os.environ["JT_RECORD"], " ".join(str(p) for p in parts))


# -- signals: one line per signal, so tests see what a Celery worker would send ---------


@task_prerun.connect
def _prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    record("prerun", task_id, task.name)


@task_postrun.connect
def _postrun(task_id: str = "", state: str = "", **_: Any) -> None:
    record("postrun", task_id, state)


@task_success.connect
def _success(sender: Any = None, result: Any = None, **_: Any) -> None:
    record("success", sender.request.id, result)


@task_failure.connect
def _failure(task_id: str = "", exception: BaseException | None = None, **_: Any) -> None:
    record("failure", task_id, type(exception).__name__)


@task_retry.connect
def _retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    record("retry", request.id, request.retries)


@task_revoked.connect
def _revoked(request: Any = None, expired: bool = False, **_: Any) -> None:
    record("revoked", request.id, expired)


# The worker's life: "kind pid what-the-sender-says" (the pid tells the
# supervisor from its members).
def _worker_line(kind: str, sender: Any) -> None:
    app_name = getattr(getattr(sender, "app", None), "main", None)
    record(kind, os.getpid(), getattr(sender, "hostname", sender), app_name, getattr(sender, "pool_cls", None))


@celeryd_init.connect
def _celeryd_init(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
    record("celeryd_init", os.getpid(), sender, instance.hostname, conf.task_default_queue)


@worker_init.connect
def _worker_init(sender: Any = None, **_: Any) -> None:
    _worker_line("worker_init", sender)


@worker_process_init.connect
def _worker_process_init(sender: Any = None, **_: Any) -> None:
    record("worker_process_init", os.getpid(), sender)


@worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    _worker_line("worker_ready", sender)


@worker_process_shutdown.connect
def _worker_process_shutdown(pid: Any = None, exitcode: Any = None, **_: Any) -> None:
    record("worker_process_shutdown", os.getpid(), pid, exitcode)


@worker_shutdown.connect
def _worker_shutdown(sender: Any = None, **_: Any) -> None:
    _worker_line("worker_shutdown", sender)


# -- tasks -------------------------------------------------------------------------------


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def tsum(values: list[int]) -> int:
    return sum(values)


@task
def explode(message: str) -> None:
    raise ValueError(message)


@task(bind=True)
def whoami(self: Any) -> dict[str, Any]:
    r = self.request
    return {
        "id": r.id,
        "retries": r.retries,
        "root_id": r.root_id,
        "parent_id": r.parent_id,
        "routing_key": (r.delivery_info or {}).get("routing_key"),
        "hostname": r.hostname,
        "called_directly": r.called_directly,
        "is_eager": r.is_eager,
    }


@task(bind=True, max_retries=3)
def retry_twice(self: Any) -> int:
    record("run", self.request.id, self.request.retries, time.time())
    if self.request.retries < 2:
        raise self.retry(countdown=0.3, exc=ConnectionError(f"attempt {self.request.retries + 1} failed"))
    return self.request.retries


@task(bind=True, max_retries=1)
def retry_forever(self: Any) -> None:
    raise self.retry(countdown=0, exc=KeyError("still broken"))


@task(
    bind=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=1,  # Celery rounds the factor to whole seconds: 1 s, then 2 s
    retry_jitter=False,
    retry_kwargs={"max_retries": 2},
)
def auto(self: Any) -> None:
    record("run", self.request.id, self.request.retries, time.time())
    raise ConnectionError("flaky network")


@task
def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
    record("errback", request.id, type(exc).__name__)


@task
def note(value: Any, tag: str) -> None:
    record("note", tag, value)


@task(soft_time_limit=0.5)
def soft(seconds: float) -> str:
    # Short sleeps: the threads pool raises the soft limit at the next
    # bytecode, which a single long C-level sleep would not reach.
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        return "soft limit"
    return "slept"


@task(time_limit=1)
def hard(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@task(rate_limit="4/s")
def limited(tag: str) -> None:
    record("limited", tag, os.getpid(), time.time())


@task(bind=True)
def keyed(self: Any, path: str) -> str:
    # Runs until the test creates ``path``: the key stays held meanwhile.
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return self.request.id


@task(bind=True, max_retries=3)
def keyed_retry(self: Any) -> int:
    record("run", self.request.id, self.request.retries, time.time())
    if self.request.retries < 1:
        raise self.retry(countdown=0.2)
    return self.request.retries


@task(bind=True, concurrency_key=lambda args, kwargs: f"user-{args[0]}")
def keyed_option(self: Any, user: str, path: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return self.request.id


def _die(path: str) -> None:
    import signal

    record("died", path, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


@task(acks_late=True, reject_on_worker_lost=True)
def die_once(path: str) -> str:
    """Kills its pool process on its first run: requeued once, then it succeeds."""
    if not os.path.exists(path):
        open(path, "w").close()
        _die(path)
    return "survived"


@task(acks_late=True, reject_on_worker_lost=True)
def die_always(path: str) -> None:
    _die(path)
