"""The exceptions of the Celery-free API, named as Celery names them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..exceptions import JobtableError
from ..worker.errors import DeferJob, JobTimeout


class NotSupported(JobtableError, NotImplementedError):
    """A Celery feature the shim does not provide.  The message names the
    feature and what to use instead."""

    def __init__(self, feature: str, alternative: str) -> None:
        super().__init__(f"jobtable.shim does not support {feature}. {alternative}")
        self.feature = feature


class Retry(DeferJob):
    """Raised by ``task.retry()``: the worker records this attempt DEFERRED and
    runs the same task id again after ``countdown`` seconds (attempt + 1,
    Celery's ``request.retries`` + 1).  A DeferJob, so the native worker needs
    no shim-specific code to re-enqueue it."""

    def __init__(self, *, countdown: float | timedelta = 0, exc: BaseException | None = None) -> None:
        super().__init__(delay=countdown, increment_retries=False)
        self.exc = exc
        reason = f": {exc!r}" if exc is not None else ""
        self.args = (f"Retry in {self.delay:g}s{reason}",)

    def __str__(self) -> str:
        return str(self.args[0])


class MaxRetriesExceededError(JobtableError):
    """``task.retry()`` was called with no retries left and no ``exc`` to raise."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None, **kwargs: Any) -> None:
        super().__init__(*args)
        self.task_args = task_args
        self.task_kwargs = task_kwargs


class TimeoutError(JobtableError):  # noqa: A001  (Celery's name)
    """``AsyncResult.get(timeout=)`` ran out of time."""


class ChordError(JobtableError):
    """A part of a chord's header failed, so its body did not run."""


class TimeLimitExceeded(JobtableError):
    """The task ran past its time limit and was stopped (the worker's JobTimeout)."""


#: Inside a task, the time limit arrives as the worker's JobTimeout (a
#: BaseException, so ``except Exception`` cannot swallow it); ``except
#: SoftTimeLimitExceeded:`` cleanup code written for Celery still catches it.
SoftTimeLimitExceeded = JobTimeout


class TaskRevokedError(JobtableError):
    """The task was cancelled (revoked) or expired before it ran."""


class NotRegistered(JobtableError, KeyError):
    """No shim task has this name in this process."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "NotRegistered"


class Ignore(BaseException):
    """Celery's ``Ignore``: raised by ``self.replace(sig)`` once the
    replacement is sent.  The attempt ends without a result of its own
    (no failure handler runs); the replacement, under the same task id,
    gives the task its result.  A BaseException, so the task's own
    ``except Exception`` does not stop it."""
