"""Job middleware: code that wraps every job the worker runs.

``JOBTABLE_MIDDLEWARE`` lists dotted paths of classes, outermost first, as
the seeds' ``JOBS_MIDDLEWARE``::

    class TimingMiddleware(JobMiddleware):
        def process_job(self, job_run):
            start = time.perf_counter()
            try:
                return self.run_job(job_run)
            finally:
                print(job_run.job_name, time.perf_counter() - start)

``process_job`` receives a ``JobRun`` (the Job instance and its uuid,
attempt, queue...), must call ``self.run_job(job_run)`` to go on, and
returns what the job returned (or raises what it raised).  The chain is
built once per worker process, not per job.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigurationError
from .setting_rules import safe_repr, safe_str

logger = logging.getLogger("jobtable.job")


@dataclass
class JobRun:
    """One attempt of one job, as middleware sees it."""

    job: Any
    job_name: str
    uuid: str
    attempt: int
    retries: int
    queue: str
    priority: int
    concurrency_key: str
    worker_id: str

    def __str__(self) -> str:
        return f"{self.job_name} {self.uuid} attempt {self.attempt}"


RunJob = Callable[[JobRun], Any]


class JobMiddleware:
    """Base class: override ``process_job`` and call ``self.run_job``."""

    def __init__(self, run_job: RunJob) -> None:
        self.run_job = run_job

    def process_job(self, job_run: JobRun) -> Any:
        return self.run_job(job_run)


_current: contextvars.ContextVar[JobRun | None] = contextvars.ContextVar("jobtable_current_job", default=None)


def current_job() -> JobRun | None:
    """The job running in this thread (inside LogContextMiddleware), or None."""
    return _current.get()


class JobContextFilter(logging.Filter):
    """Adds ``job_name``, ``job_uuid`` and ``job_attempt`` to log records made
    while a job runs (empty strings outside jobs), for log formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = _current.get()
        record.job_name = run.job_name if run else ""
        record.job_uuid = run.uuid if run else ""
        record.job_attempt = run.attempt if run else ""
        return True


class LogContextMiddleware(JobMiddleware):
    """The default: makes the running job known to logging (``current_job()``,
    ``JobContextFilter``) and logs each job's start and end at DEBUG."""

    def process_job(self, job_run: JobRun) -> Any:
        token = _current.set(job_run)
        debug = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug("Running %s", job_run)
        try:
            value = self.run_job(job_run)
        finally:
            _current.reset(token)
        if debug:
            logger.debug("Finished %s", job_run)
        return value


def run_job(job_run: JobRun) -> Any:
    """The innermost step: the job itself."""
    return job_run.job.run()


def load(path: str) -> type[JobMiddleware]:
    module_name, _, name = path.replace(":", ".").rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except Exception as exc:  # the module itself may fail: SyntaxError, NameError...
        raise ConfigurationError(
            f"Cannot load the job middleware {path!r} ({safe_str(exc)}). "
            "Fix JOBTABLE_MIDDLEWARE: dotted paths of importable classes, e.g. 'myproject.middleware.Timing'."
        ) from None
    _check_class(obj, path)
    return obj  # type: ignore[no-any-return]


def _check_class(obj: Any, path: str) -> None:
    if not (isinstance(obj, type) and callable(getattr(obj, "process_job", None))):
        raise ConfigurationError(
            f"The job middleware {path!r} is {safe_repr(obj)}, not a middleware class. Fix JOBTABLE_MIDDLEWARE: "
            "give classes with a process_job(job_run) method, e.g. subclasses of jobtable.middleware.JobMiddleware."
        )


def check_all(paths: Sequence[str | type[JobMiddleware]]) -> None:
    """Load every middleware class (without making instances), so that a
    worker with a bad one refuses to start instead of its pool members
    failing one after the other."""
    for path in paths:
        if isinstance(path, str):
            load(path)
        else:
            _check_class(path, safe_repr(path))


def build_chain(paths: Sequence[str | type[JobMiddleware]], inner: RunJob = run_job) -> RunJob:
    """``paths[0]`` outermost; each middleware wraps the next, the job innermost."""
    handler = inner
    for path in reversed(list(paths)):
        cls = load(path) if isinstance(path, str) else path
        handler = cls(handler).process_job
    return handler
