"""The Job API: ``Job``, its defaults and hooks, and ``run_in_worker``.

The public behaviour follows plain.jobs; the plain.worker-era names
(``get_queue``, ``get_priority``, ``get_retries``, ``get_retry_delay``,
``get_unique_key`` and ``unique_key=``) still work, so code written for
either runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .db import reads_sql, tables

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .enqueue import Delay

_T = TypeVar("_T")


class DeferJob(Exception):
    """Raise inside ``run()`` to run the job again later (a DEFERRED result).

    ``increment_retries=False`` (the default): the deferral does not use up
    one of the job's retries.  True: it counts as one, and a job without
    retries left is recorded ERRORED instead.
    """

    def __init__(self, *, delay: int | float | timedelta, increment_retries: bool = False) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError(f"DeferJob(delay={delay!r}): the delay must be 0 or more seconds.")
        super().__init__(f"deferred for {seconds:g} s")
        self.delay = seconds
        self.increment_retries = increment_retries


class JobType(type):
    """Remembers the arguments a Job was built with: they are what is stored."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        instance._init_args = args
        instance._init_kwargs = kwargs
        return instance


@dataclass(frozen=True)
class JobRequest:
    """A job waiting in, or running from, the queue table."""

    id: int
    uuid: str
    job_class: str
    queue: str
    priority: int
    state: str
    start_at: datetime
    concurrency_key: str
    attempt: int
    retries: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> JobRequest:
        return cls(
            id=row.id,
            uuid=row.task_id,
            job_class=row.task_name,
            queue=row.queue,
            priority=row.priority,
            state=row.state,
            start_at=row.run_at,
            concurrency_key=row.concurrency_key or "",
            attempt=row.attempt,
            retries=row.retries,
            created_at=row.created_at,
        )


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
        conn = self._job._enqueue_connection
        if conn is not None:
            return fn(conn)
        from .db.engine import connect

        with connect() as conn, conn.begin():
            return fn(conn)

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


def _overrides(job: Job, name: str) -> bool:
    return getattr(type(job), name) is not getattr(Job, name)


class Job(metaclass=JobType):
    """Subclass, implement ``run()``, decorate with ``@register_job``."""

    _init_args: tuple[Any, ...] = ()
    _init_kwargs: dict[str, Any] = {}
    _enqueue_connection: Connection | None = None

    def run(self) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must implement run().")

    # -- defaults (overridable per call in run_in_worker) ----------------------

    def default_queue(self) -> str:
        return "default"

    def default_priority(self) -> int:
        """Higher numbers run first: 10 > 5 > 0 > -5 > -10."""
        return 0

    def default_retries(self) -> int:
        return 0

    def default_concurrency_key(self) -> str:
        """At most one pending-or-running job per (job class, key)."""
        return ""

    def default_timeout(self) -> int | float | None:
        """Seconds this job may run before the worker stops it (None: JOBTABLE_TIMEOUT)."""
        return None

    def calculate_retry_delay(self, attempt: int) -> int | float | timedelta:
        """Delay before retrying after failed ``attempt`` (1 for the first)."""
        return 0

    def should_enqueue(self, concurrency_key: str) -> bool:
        """Return False to skip this enqueue.  Runs atomically with the insert."""
        return True

    # -- helpers for should_enqueue --------------------------------------------

    def get_requested_jobs(self, concurrency_key: str | None = None, *, include_scheduled: bool = True) -> JobQuery:
        """Jobs of this class waiting to run (``concurrency_key=None``: any key)."""
        states = (tables.SCHEDULED, tables.PENDING) if include_scheduled else (tables.PENDING,)
        return JobQuery(self, states, concurrency_key)

    def get_processing_jobs(self, concurrency_key: str | None = None) -> JobQuery:
        """Jobs of this class running now (``concurrency_key=None``: any key)."""
        return JobQuery(self, (tables.RUNNING,), concurrency_key)

    # -- plain.worker-era names -------------------------------------------------

    def get_queue(self) -> str:
        return self.default_queue()

    def get_priority(self) -> int:
        return self.default_priority()

    def get_retries(self) -> int:
        return self.default_retries()

    def get_retry_delay(self, attempt: int) -> int | float | timedelta:
        return self.calculate_retry_delay(attempt)

    def get_unique_key(self) -> str:
        return self.default_concurrency_key()

    # -- resolved values: an overridden old name wins over the new default ------

    def resolved_queue(self) -> str:
        return self.get_queue() if _overrides(self, "get_queue") else self.default_queue()

    def resolved_priority(self) -> int:
        return self.get_priority() if _overrides(self, "get_priority") else self.default_priority()

    def resolved_retries(self) -> int:
        return self.get_retries() if _overrides(self, "get_retries") else self.default_retries()

    def resolved_concurrency_key(self) -> str:
        return self.get_unique_key() if _overrides(self, "get_unique_key") else self.default_concurrency_key()

    def resolved_retry_delay(self, attempt: int) -> int | float | timedelta:
        if _overrides(self, "get_retry_delay"):
            return self.get_retry_delay(attempt)
        return self.calculate_retry_delay(attempt)

    # -- enqueueing ----------------------------------------------------------------

    @classmethod
    def job_name(cls) -> str:
        from .registry import jobs_registry

        return jobs_registry.name_of(cls)

    def run_in_worker(
        self,
        *,
        queue: str | None = None,
        delay: Delay = None,
        priority: int | None = None,
        retries: int | None = None,
        concurrency_key: str | None = None,
        unique_key: str | None = None,
        connection: Connection | Session | None = None,
    ) -> JobRequest | None:
        """Enqueue this job.  Returns the request, or None when a job with the
        same concurrency key is pending or running, or ``should_enqueue`` said no.

        ``connection``: a SQLAlchemy Connection or Session whose transaction the
        job joins -- it exists only if that transaction commits.
        """
        from .enqueue import enqueue

        return enqueue(
            [self],
            queue=queue,
            delay=delay,
            priority=priority,
            retries=retries,
            concurrency_key=concurrency_key if concurrency_key is not None else unique_key,
            connection=connection,
        )[0]
