"""A small Celery-style app on ``jobtable.shim`` whose tasks route to
several queues, for the worker's default-queue tests
(``jobtable --app tests.routed_shim_app worker``).

``plain`` goes to the app's default queue: Celery's ``celery``, or
ROUTED_DEFAULT_QUEUE when set (``task_default_queue``); ``urgent`` is sent
to ``urgent`` by ``task_routes``.  ``Tidy`` is a Job (queue ``default``),
registered only when ROUTED_WITH_JOB is set.
"""

from __future__ import annotations

import os

from jobtable.shim import Celery

app = Celery("routed")
app.conf.task_default_queue = os.environ.get("ROUTED_DEFAULT_QUEUE", "celery")
app.conf.task_routes = {"tests.routed_shim_app.urgent": {"queue": "urgent"}}


def _append(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")


@app.task
def plain(path: str) -> None:
    _append(path, "plain")


@app.task
def urgent(path: str) -> None:
    _append(path, "urgent")


if os.environ.get("ROUTED_WITH_JOB"):
    from jobtable import Job, register_job

    @register_job
    class Tidy(Job):
        def __init__(self, path: str) -> None:
            self.path = path

        def run(self) -> None:
            _append(self.path, "tidy")
