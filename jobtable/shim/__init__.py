"""The Celery-free API: Celery task code on jobtable, with Celery uninstalled.

    from jobtable.shim import Celery, shared_task

    app = Celery("proj")

    @shared_task(bind=True, max_retries=5, autoretry_for=(IOError,), retry_backoff=True)
    def fetch(self, url): ...

    fetch.delay("https://example.com")   # a row in jobtable_request

Run the tasks with ``jobtable worker --app proj.tasks --queue celery`` (the
shim keeps Celery's default queue name, ``celery``).  Importing this package
teaches the native worker to run shim tasks (``runner.install``).

Nothing here imports Celery.  (``jobtable.shim.backend`` and
``jobtable.shim.celery_jobs`` are for projects that still run Celery.)
"""

from __future__ import annotations

import logging

from . import builtin_tasks as _builtin_tasks
from . import runner as _runner
from .app import Celery, current_app
from .canvas import Signature, chain, chord, group, signature
from .decorators import shared_task
from .exceptions import (
    ChordError,
    MaxRetriesExceededError,
    NotRegistered,
    NotSupported,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from .result import AsyncResult, EagerResult, GroupResult
from .schedules import crontab, schedule
from .signals import (
    after_task_publish,
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from .states import FAILURE, PENDING, RETRY, REVOKED, STARTED, SUCCESS
from .task import Task


def get_task_logger(name: str) -> logging.Logger:
    """Celery's ``get_task_logger``: a logger under ``celery.task`` (the
    worker's JobContextFilter adds the job's name and id to its records)."""
    return logging.getLogger(f"celery.task.{name}" if not name.startswith("celery.") else name)


_runner.install()
_builtin_tasks.install()

__all__ = [
    "FAILURE",
    "PENDING",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "AsyncResult",
    "Celery",
    "ChordError",
    "EagerResult",
    "GroupResult",
    "MaxRetriesExceededError",
    "NotRegistered",
    "NotSupported",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "after_task_publish",
    "before_task_publish",
    "chain",
    "chord",
    "crontab",
    "current_app",
    "get_task_logger",
    "group",
    "schedule",
    "shared_task",
    "signature",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
]
