"""The Job API: ``Job``, its should_enqueue helpers and ``run_in_worker``.

The defaults and hooks live in ``jobbase.BaseJob``, below ``enqueue`` and
``registry``, which this module calls.

The public behaviour follows plain.jobs; the plain.worker-era names
(``get_queue``, ``get_priority``, ``get_retries``, ``get_retry_delay``,
``get_unique_key`` and ``unique_key=``) still work, so code written for
either runs unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection

from . import limits
from .db import clock, reads_sql, tables
from .enqueue import Delay, enqueue
from .jobbase import BaseJob, JobRequest, JobType
from .registry import jobs_registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["DeferJob", "Job", "JobQuery", "JobRequest", "JobType"]

_T = TypeVar("_T")


class DeferJob(Exception):
    """Raise inside ``run()`` to run the job again later (a DEFERRED result).

    ``increment_retries=False`` (the default): the deferral does not use up
    one of the job's retries.  True: it counts as one, and a job without
    retries left is recorded ERRORED instead.
    """

    def __init__(self, *, delay: int | float | timedelta, increment_retries: bool = False) -> None:
        # The same rules as run_in_worker(delay=): a number of seconds >= 0
        # or a timedelta whose end is a time (not NaN, inf or past year
        # 9999) -- else an EnqueueError (a ValueError) naming DeferJob, on
        # the native worker and under Celery alike.
        seconds = limits.seconds_of("delay", delay, source="DeferJob", datetimes=False)
        limits.time_after(datetime.now(timezone.utc), "delay", delay, source="DeferJob", datetimes=False)
        super().__init__(f"deferred for {seconds:g} s")
        self.delay = seconds
        self.increment_retries = increment_retries

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt with its keyword arguments (the default rebuilds from
        # ``args``, its text, which __init__ does not take): Celery checks
        # that an exception pickles before it stores it (a Job's DeferJob
        # under a Celery worker, shim/celery_jobs.py) and would store a
        # wrapper instead.
        return (functools.partial(type(self), delay=self.delay, increment_retries=self.increment_retries), ())


def _on_enqueue_connection(job: Job, fn: Callable[[Connection], _T]) -> _T:
    conn = job._enqueue_connection
    if conn is not None:
        return fn(conn)
    from .db.engine import connect

    with connect() as conn, conn.begin():
        return fn(conn)


class JobQuery:
    """Requests of one job class, for ``should_enqueue`` checks.

    Runs on the enqueue's own connection when called from ``should_enqueue``
    (so it sees the state the lock protects), else on a new one.
    """

    def __init__(self, job: Job, states: tuple[str, ...], concurrency_key: str | None) -> None:
        self._job = job
        self._stmt = reads_sql.requests_select(
            task_name=job.job_name(), concurrency_key=concurrency_key, states=states
        )

    def _run(self, fn: Callable[[Connection], _T]) -> _T:
        return _on_enqueue_connection(self._job, fn)

    def count(self) -> int:
        return int(self._run(lambda conn: reads_sql.count(conn, self._stmt)))

    def exists(self) -> bool:
        return bool(self._run(lambda conn: conn.execute(select(self._stmt.exists())).scalar()))

    def all(self) -> list[JobRequest]:
        return self._run(lambda conn: [JobRequest.from_row(row) for row in conn.execute(self._stmt)])

    def __iter__(self) -> Iterator[JobRequest]:
        return iter(self.all())

    def __len__(self) -> int:
        return self.count()


class Job(BaseJob):
    """Subclass, implement ``run()``, decorate with ``@register_job``."""

    # -- helpers for should_enqueue --------------------------------------------

    def get_requested_jobs(self, concurrency_key: str | None = None, *, include_scheduled: bool = True) -> JobQuery:
        """Jobs of this class waiting to run (``concurrency_key=None``: any key)."""
        states = (tables.SCHEDULED, tables.PENDING) if include_scheduled else (tables.PENDING,)
        return JobQuery(self, states, concurrency_key)

    def get_processing_jobs(self, concurrency_key: str | None = None) -> JobQuery:
        """Jobs of this class running now (``concurrency_key=None``: any key)."""
        return JobQuery(self, (tables.RUNNING,), concurrency_key)

    def count_active_jobs(self, concurrency_key: str | None = None, *, include_scheduled: bool = True) -> int:
        """Jobs of this class waiting or running (``concurrency_key=None``:
        any key; ``include_scheduled=False``: not those delayed to later):
        ``return self.count_active_jobs(key) < 3`` allows 3 per key."""
        states = (tables.SCHEDULED, tables.PENDING, tables.RUNNING) if include_scheduled else (
            tables.PENDING,
            tables.RUNNING,
        )
        return JobQuery(self, states, concurrency_key).count()

    def count_recent_jobs(self, concurrency_key: str, seconds: int | float | timedelta) -> int:
        """Jobs of this class and key enqueued in the last ``seconds``,
        finished or not (each counted once, however often it was retried):
        ``return self.count_recent_jobs(key, 60) < 5`` allows 5 a minute.
        Finished jobs count while their results are kept
        (``results_retention``)."""
        window = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not window >= 0:
            raise ValueError(f"count_recent_jobs(seconds={seconds!r}): the window must be 0 or more seconds.")
        since = clock.utcnow() - timedelta(seconds=window)
        name = self.job_name()
        return _on_enqueue_connection(self, lambda conn: reads_sql.count_enqueued_since(conn, name, concurrency_key, since))

    # -- enqueueing ----------------------------------------------------------------

    @classmethod
    def job_name(cls) -> str:
        return jobs_registry.name_of(cls)

    def run_in_worker(
        self,
        *,
        queue: str | None = None,
        delay: Delay = None,
        priority: int | None = None,
        retries: int | None = None,
        retry_attempt: int = 0,
        concurrency_key: str | None = None,
        unique_key: str | None = None,
        connection: Connection | Session | None = None,
    ) -> JobRequest | None:
        """Enqueue this job.  Returns the request, or None when a job with the
        same concurrency key is pending or running, or ``should_enqueue`` said no.

        ``retry_attempt``: how many attempts this job has already had (0, the
        default, for a new job; plain.jobs' parameter): the request's
        ``attempt`` is ``retry_attempt + 1`` and it is retried while
        ``retry_attempt < retries``, so ``retries=3, retry_attempt=1`` leaves
        two retries.  ``calculate_retry_delay`` sees the attempt numbers.

        ``connection``: a SQLAlchemy Connection or Session whose transaction the
        job joins -- it exists only if that transaction commits.
        """
        return enqueue(
            [self],
            queue=queue,
            delay=delay,
            priority=priority,
            retries=retries,
            concurrency_key=concurrency_key if concurrency_key is not None else unique_key,
            connection=connection,
            retry_attempt=retry_attempt,
        )[0]
