"""The Celery app of test_parity.py: the same tasks with jobtable as broker
and result backend (PostgreSQL), or with Redis as both -- the reference.

A prefork Celery worker runs ``celery -A compat_tests.parity_app worker``
with ``PARITY_BACKEND`` (``jobtable`` or ``redis``), ``PARITY_QUEUE`` and,
for jobtable, ``JOBTABLE_DATABASE_URL``; the test process builds the same app
with ``make_app``.  Tasks that must leave a trace append a line to the file
they are given.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jobtable  # noqa: F401  (registers the jobtable+ URLs with Kombu)
from celery import Celery
from celery.signals import task_revoked

#: Redis database of the reference runs (results keyed by task id, queues by
#: PARITY_QUEUE: runs in parallel do not meet).
REDIS_URL = os.environ.get("PARITY_REDIS_URL", "redis://127.0.0.1:6379/7")


def append(path: str, *parts: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(str(p) for p in parts) + "\n").encode())
    finally:
        os.close(fd)


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def _note_revoked(sender: Any = None, request: Any = None, terminated: Any = None, signum: Any = None,
                  expired: Any = None, **kwargs: Any) -> None:
    """celery.signals.task_revoked, noted in PARITY_SIGNAL_LOG (the worker's)."""
    path = os.environ.get("PARITY_SIGNAL_LOG")
    if path:
        append(path, getattr(request, "id", None), getattr(sender, "name", None), bool(terminated), signum, bool(expired))


task_revoked.connect(_note_revoked, weak=False)


def make_app(kind: str, queue: str, db_url: str | None = None) -> Celery:
    if kind == "jobtable":
        assert db_url, "jobtable needs JOBTABLE_DATABASE_URL"
        url = "jobtable+" + db_url
        app = Celery("parity", broker=url, backend=url, set_as_current=False)
        app.conf.broker_transport_options = {"polling_interval": 0.5, "lease_seconds": 5, "eta_interval": 0.05}
    elif kind == "redis":
        app = Celery("parity", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    else:
        raise ValueError(kind)
    app.conf.update(
        task_default_queue=queue,
        result_chord_join_timeout=10,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_timer_precision=0.1,
    )
    define_tasks(app)
    return app


def define_tasks(app: Celery) -> None:
    # shared=False: each make_app defines its own functions; shared ones would
    # join every app made later, two callables under one name.
    @app.task(name="parity.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="parity.tsum", shared=False)
    def tsum(values: list[Any]) -> Any:
        return sum(values)

    @app.task(name="parity.echo", shared=False)
    def echo(value: Any) -> Any:
        return value

    @app.task(name="parity.fail", shared=False)
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="parity.record_error", shared=False, bind=True)
    def record_error(self: Any, failed_id: str, path: str) -> None:
        """An old-style errback (bind=True: called with the failed task's id)."""
        append(path, failed_id)

    @app.task(name="parity.retry_once", shared=False, bind=True, max_retries=3)
    def retry_once(self: Any, path: str, countdown: float) -> int:
        append(path, self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=countdown, exc=ConnectionError("first attempt failed"))
        return int(self.request.retries)

    @app.task(name="parity.progress", shared=False, bind=True)
    def progress(self: Any, state: str, path: str, release: str) -> str:
        self.update_state(state=state, meta={"done": 3})
        append(path, "updated")
        wait_for_file(release)
        return "finished"

    @app.task(name="parity.hold", shared=False, acks_late=True)
    def hold(path: str, release: str) -> str:
        """acks_late: its message stays claimed while it runs."""
        append(path, "running")
        wait_for_file(release)
        return "released"

    @app.task(name="parity.hold_pid", shared=False)
    def hold_pid(path: str, release: str) -> str:
        """Notes the pool process it runs in, then waits for ``release``."""
        append(path, "running", os.getpid())
        wait_for_file(release)
        append(path, "finished")
        return "released"

    @app.task(name="parity.hold_tracked", shared=False, track_started=True)
    def hold_tracked(path: str, release: str) -> str:
        append(path, "running")
        wait_for_file(release)
        return "released"

    @app.task(name="parity.grow_chord", shared=False, bind=True)
    def grow_chord(self: Any, value: int) -> int:
        """A header task that adds a task to its own chord."""
        self.add_to_chord(add.si(value, 100))
        return value

    @app.task(name="parity.replace_with", shared=False, bind=True)
    def replace_with(self: Any, value: int) -> Any:
        """A header task that replaces itself with a group of two."""
        from celery import group

        raise self.replace(group(add.si(value, 1), add.si(value, 2)))


def _worker_app() -> Celery | None:
    kind = os.environ.get("PARITY_BACKEND")
    if not kind:
        return None
    return make_app(kind, os.environ["PARITY_QUEUE"], os.environ.get("JOBTABLE_DATABASE_URL"))


#: The worker's app (``celery -A compat_tests.parity_app``); None when imported by the tests.
app = _worker_app()
