"""What a Job is, below everything that enqueues, registers or defines Jobs.

``BaseJob`` holds a Job's stored arguments, defaults, hooks and resolved
values; ``JobRequest`` (from ``records``) is a queued job as the API returns it.  ``enqueue``
and ``registry`` need these types, and ``jobs.Job`` (which calls both)
builds on them: keeping them here lets every one of those imports point
down.  Users subclass ``jobtable.Job``, never ``BaseJob``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from .db import enqueue_sql
from .exceptions import EnqueueError

# JobRequest lives with the other records (it reads and acts on the queue);
# imported here so that ``jobbase.JobRequest`` stays where enqueue finds it.
from .records import JobRequest as JobRequest


class JobType(type):
    """Remembers the arguments a Job was built with: they are what is stored."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        instance._init_args = args
        instance._init_kwargs = kwargs
        return instance


def _overrides(job: BaseJob, name: str) -> bool:
    return getattr(type(job), name) is not getattr(BaseJob, name)


def overrides(job: BaseJob, name: str) -> bool:
    """Whether ``job``'s class replaces BaseJob's method ``name``."""
    return _overrides(job, name)


def enqueue_lock_name(job_name: str, concurrency_key: str) -> str:
    """What the database lock of one (job class, key) is taken on."""
    return f"{job_name}:{concurrency_key}"


class BaseJob(metaclass=JobType):
    """What enqueue and the registry need of a Job: its stored arguments,
    defaults, hooks and their resolved values.  ``jobs.Job`` adds the rest
    (its registered name, run_in_worker, the should_enqueue helpers)."""

    _init_args: tuple[Any, ...] = ()
    _init_kwargs: dict[str, Any] = {}
    _enqueue_connection: Connection | None = None  # set by enqueue while should_enqueue runs
    #: At most this many attempts of the class start, across every worker:
    #: Celery's rate strings ("10/m", "5/s", "100/h", a number per second;
    #: None: no limit).  A class attribute, not a default_*() method: the
    #: worker reads it before it builds the job.  Checked at @register_job;
    #: enforced by the database (db/ratelimit_sql.py).
    rate_limit: str | int | float | None = None

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
        """Return False to skip this enqueue.  Runs atomically with the insert,
        under ``get_enqueue_lock(concurrency_key)``.

        Kept as is, the database allows one pending-or-running job per
        (job class, key).  Overridden, it is the limit: jobs of a key are
        grouped by it but no longer unique (``Job.count_active_jobs``,
        ``Job.count_recent_jobs`` help write limits)."""
        return True

    def get_enqueue_lock(self, concurrency_key: str) -> AbstractContextManager[object]:
        """The lock under which ``should_enqueue`` and the insert run, when
        this class overrides ``should_enqueue``.

        The default is the database's: a transaction-scoped advisory lock on
        (job class, key) on PostgreSQL, the database write lock on SQLite;
        it is taken inside the enqueue's transaction and held until that
        transaction ends.  Override it (a Redis lock, a lock over every key
        for a global limit...) with any context manager: jobtable enters it
        before the enqueue's transaction begins and leaves it after the
        commit, so the next enqueue's check sees this one's row.  With
        ``connection=`` the commit is the caller's, after the lock is left.
        """
        return self._database_enqueue_lock(concurrency_key)

    @contextmanager
    def _database_enqueue_lock(self, concurrency_key: str) -> Iterator[None]:
        conn = self._enqueue_connection
        if conn is None:
            raise EnqueueError(
                f"{type(self).__qualname__}: the default get_enqueue_lock() is the database's lock of the "
                "enqueue transaction and can only be taken inside it (run_in_worker does that)."
            )
        enqueue_sql.lock_for_enqueue(conn, [enqueue_lock_name(self.job_name(), concurrency_key)])
        # Released with the transaction, not here.
        yield

    @classmethod
    def job_name(cls) -> str:
        """The name the class is registered under: ``jobs.Job`` asks the
        registry (which sits above this module)."""
        raise NotImplementedError(f"{cls.__qualname__} is not a jobtable.Job subclass.")

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
