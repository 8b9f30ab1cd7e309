"""Reading the queue from Python: ``JobRequest``, ``JobProcess``, ``JobResult``.

plain.jobs keeps three kinds of record -- a job waiting (``JobRequest``), a
job running (``JobProcess``) and a finished attempt (``JobResult``) -- and
so does this module, over jobtable's two tables: requests and processes are
rows of ``jobtable_request`` (state scheduled/pending, or running), results
rows of ``jobtable_result``.  Each class has a ``query`` (filters by job
class, queue, state or status, concurrency key and uuid; newest first;
``count``, ``exists``, ``first``, iteration in keyset pages), and the
operations a user needs: ``request.refresh()``, ``request.cancel()``,
``request.wait(timeout=)`` and ``result.retry()``.

The CLI and the dashboard's actions go through the same functions
(``retry_latest``, ``cancel_waiting``), which take a Connection so that the
caller chooses the transaction.  The SQL lives in ``db/reads_sql`` and
``db/operations_sql``; this module only chooses and converts.  What the three
queries share is ``record_queries.py``; the wait for a final result,
``result_wait.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Select

from . import result_wait
from .db import cancels_sql, clock, operations_sql, reads_sql, tables, workers_sql
from .db import engine as db_engine
from .exceptions import JobNotFound, JobStateError
from .record_queries import Query, QueryAttribute, choices, reading

__all__ = [
    "JobProcess",
    "JobRequest",
    "JobResult",
    "ProcessQuery",
    "RequestQuery",
    "ResultQuery",
    "cancel_running",
    "cancel_waiting",
    "retry_latest",
    "wait_for",
]

WAITING_STATES = (tables.SCHEDULED, tables.PENDING)


class _ByUuid:
    """What a waiting or running job can do: read its result, wait, cancel."""

    uuid: str

    def result(self) -> JobResult | None:
        """The newest finished attempt of this job, if any (no waiting)."""
        with reading() as conn:
            row = reads_sql.latest_result(conn, self.uuid)
        return None if row is None else JobResult.from_row(row)

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job has finished (retries included) and return its
        last result.  See ``wait_for``."""
        return wait_for(self.uuid, timeout)

    def cancel(self, timeout: float | None = 30.0) -> JobResult:
        """Cancel the job; returns its result.  One that has not started is
        recorded CANCELLED at once.  A running one is stopped by its native
        worker (``JobCancelled`` raised in its code within ~0.25 s; its
        process killed and replaced if it does not end within the worker's
        timeout grace) and recorded CANCELLED, not retried: this waits up to
        ``timeout`` seconds for that result (``TimeoutError`` past it; the
        cancel stays asked).  It may have finished first: check ``.status``.
        A job running under a Celery worker raises ``JobStateError``."""
        with db_engine.connect() as conn, conn.begin():
            try:
                return cancel_waiting(conn, self.uuid, clock.utcnow())
            except JobStateError:
                cancel_running(conn, self.uuid, clock.utcnow())
        return wait_for(self.uuid, timeout)


# -- queries (what they share: record_queries.py) --------------------------------------


class RequestQuery(Query["JobRequest"]):
    """Jobs waiting or running (``JobRequest.query``)."""

    _table = tables.request

    def filter(
        self,
        *,
        job_class: str | type | None = None,
        queue: str | None = None,
        state: str | Iterable[str] | None = None,
        concurrency_key: str | None = None,
        uuid: str | None = None,
    ) -> RequestQuery:
        """``concurrency_key=""`` matches jobs without one; ``state`` is one
        of scheduled, pending, claimed (fetched by a worker, not started
        yet), running (started) or a list of them."""
        query = self._common(job_class, queue, concurrency_key, uuid)
        if state is not None:
            query = query._with(states=choices("state", state, reads_sql.SHOWN_STATES, upper=False))
        return query

    def _select(self) -> Select[Any]:
        filters = dict(self._filters)
        states = filters.pop("states", reads_sql.SHOWN_STATES)
        return reads_sql.requests_select(states=states, split_running=True, **filters)

    def _convert(self, row: Row[Any]) -> JobRequest:
        return JobRequest.from_row(row)


class ProcessQuery(Query["JobProcess"]):
    """Jobs running now (``JobProcess.query``)."""

    _table = tables.request

    def filter(
        self,
        *,
        job_class: str | type | None = None,
        queue: str | None = None,
        concurrency_key: str | None = None,
        uuid: str | None = None,
        worker_id: str | None = None,
    ) -> ProcessQuery:
        return self._common(job_class, queue, concurrency_key, uuid)._with(worker_id=worker_id)

    def _select(self) -> Select[Any]:
        filters = dict(self._filters)
        worker_id = filters.pop("worker_id", None)
        # Started only: a claimed job waiting behind its member's current
        # one is not running (JobRequest.query shows it as "claimed").
        stmt = reads_sql.requests_select(states=(tables.RUNNING,), split_running=True, **filters)
        if worker_id is not None:
            stmt = stmt.where(tables.request.c.worker_id == worker_id)
        return stmt

    def _convert(self, row: Row[Any]) -> JobProcess:
        return JobProcess.from_row(row)


class ResultQuery(Query["JobResult"]):
    """Finished attempts (``JobResult.query``)."""

    _table = tables.result

    def filter(
        self,
        *,
        job_class: str | type | None = None,
        queue: str | None = None,
        status: str | Iterable[str] | None = None,
        concurrency_key: str | None = None,
        uuid: str | None = None,
    ) -> ResultQuery:
        """``status``: one of SUCCESSFUL, ERRORED, CANCELLED, LOST,
        DEFERRED, QUARANTINED, DEAD_LETTER (any case) or a list of them."""
        query = self._common(job_class, queue, concurrency_key, uuid)
        if status is not None:
            query = query._with(statuses=choices("status", status, tables.RESULT_STATUSES, upper=True))
        return query

    def _select(self) -> Select[Any]:
        return reads_sql.results_select(**self._filters)

    def _convert(self, row: Row[Any]) -> JobResult:
        return JobResult.from_row(row)


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest(_ByUuid):
    """A job waiting in, or running from, the queue table (what
    ``run_in_worker`` returns)."""

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

    #: All of them, to filter: ``JobRequest.query.filter(...)``.
    query: ClassVar[QueryAttribute[RequestQuery]] = QueryAttribute(RequestQuery)

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

    def refresh(self) -> JobRequest | None:
        """This job as the table has it now (its state, or its retry: the
        same uuid, a later attempt), or None once it has finished -- then
        ``result()`` tells how."""
        with reading() as conn:
            row = conn.execute(reads_sql.shown_request(self.uuid)).first()
        return None if row is None else JobRequest.from_row(row)


@dataclass(frozen=True)
class JobProcess(_ByUuid):
    """A job a worker is running now: a request in state ``running`` that
    its worker's heartbeat reports started (not one merely claimed)."""

    id: int
    uuid: str
    job_class: str
    queue: str
    priority: int
    concurrency_key: str
    attempt: int
    retries: int
    created_at: datetime
    started_at: datetime | None
    worker_id: str

    #: All of them, to filter: ``JobProcess.query.filter(...)``.
    query: ClassVar[QueryAttribute[ProcessQuery]] = QueryAttribute(ProcessQuery)

    @classmethod
    def from_row(cls, row: Any) -> JobProcess:
        return cls(
            id=row.id,
            uuid=row.task_id,
            job_class=row.task_name,
            queue=row.queue,
            priority=row.priority,
            concurrency_key=row.concurrency_key or "",
            attempt=row.attempt,
            retries=row.retries,
            created_at=row.created_at,
            started_at=row.started_at,
            worker_id=row.worker_id or "",
        )

    def refresh(self) -> JobRequest | None:
        """The job as the table has it now (None once it has finished)."""
        with reading() as conn:
            row = conn.execute(reads_sql.shown_request(self.uuid)).first()
        return None if row is None else JobRequest.from_row(row)


@dataclass(frozen=True)
class JobResult:
    """One finished attempt of a job (a ``jobtable_result`` row)."""

    id: int
    uuid: str
    job_class: str
    queue: str
    priority: int
    concurrency_key: str
    status: str
    attempt: int
    retries: int
    requested_at: datetime | None
    started_at: datetime | None
    ended_at: datetime
    worker_id: str
    #: The stored JSON of what ``run()`` returned (None unless SUCCESSFUL).
    return_value: str | None
    error_type: str
    error_message: str
    traceback: str
    #: True when another attempt followed this one (same uuid, attempt + 1).
    retried: bool

    #: All of them, to filter: ``JobResult.query.filter(...)``.
    query: ClassVar[QueryAttribute[ResultQuery]] = QueryAttribute(ResultQuery)

    @classmethod
    def from_row(cls, row: Any) -> JobResult:
        return cls(
            id=row.id,
            uuid=row.task_id,
            job_class=row.task_name,
            queue=row.queue,
            priority=row.priority,
            concurrency_key=row.concurrency_key or "",
            status=row.status,
            attempt=row.attempt,
            retries=row.retries,
            requested_at=row.requested_at,
            started_at=row.started_at,
            ended_at=row.ended_at,
            worker_id=row.worker_id or "",
            return_value=row.return_value,
            error_type=row.error_type or "",
            error_message=row.error_message or "",
            traceback=row.traceback or "",
            retried=bool(row.retried),
        )

    @property
    def value(self) -> Any:
        """``return_value`` decoded from JSON (parameter markers such as
        dates stay as their JSON objects); None when nothing was returned."""
        if self.return_value is None:
            return None
        try:
            return json.loads(self.return_value)
        except ValueError:
            return self.return_value

    @property
    def successful(self) -> bool:
        return self.status == tables.SUCCESSFUL

    def retry(self) -> JobRequest:
        """Enqueue this job's next attempt (same uuid, ``attempt + 1``).

        Only the newest attempt of a finished job can be retried; two
        concurrent retries of it make one request, and the other raises
        ``JobStateError``.  So does a concurrency key held by another job."""
        with db_engine.connect() as conn, conn.begin():
            return retry_latest(conn, self.uuid, clock.utcnow(), result_id=self.id)


# -- operations (the CLI and the dashboard call these too) -----------------------------------


def cancel_waiting(conn: Connection, uuid: str, now: datetime) -> JobResult:
    """Remove a job that has not started and record it CANCELLED.

    Raises ``JobStateError`` when it is running (it is left to finish: a
    job's code is never interrupted from outside), ``JobNotFound`` when no
    waiting or running job has that uuid."""
    removed = operations_sql.cancel_pending(conn, uuid, now)
    if removed is None:
        active = reads_sql.active_request(conn, uuid)
        if active is not None:
            raise JobStateError(
                f"Job {uuid} is already running; it cannot be cancelled before it ends "
                "(it is not interrupted: bound it with a timeout)."
            )
        raise JobNotFound(f"No pending job has uuid {uuid}. List them with `jobtable requests`.")
    row = reads_sql.latest_result(conn, uuid)
    assert row is not None  # cancel_pending has just inserted it
    return JobResult.from_row(row)


def cancel_running(conn: Connection, uuid: str, now: datetime) -> None:
    """Ask the native worker running job ``uuid`` to stop it (a stored
    mark: db/cancels_sql.py); it is recorded CANCELLED when it stops.
    ``JobStateError`` when a Celery worker runs it (use Celery's
    ``app.control.revoke(id, terminate=True)``), ``JobNotFound`` when it
    is not running."""
    row = cancels_sql.running_row(conn, uuid)
    if row is None:
        raise JobNotFound(f"No waiting or running job has uuid {uuid}. List them with `jobtable requests`.")
    if not str(row.worker_id or "").startswith(workers_sql.NATIVE_PREFIX):
        raise JobStateError(
            f"Job {uuid} is running under a Celery worker ({row.worker_id}), which does not read jobtable's "
            "cancel marks: stop it with Celery's app.control.revoke(id, terminate=True)."
        )
    cancels_sql.ask(conn, uuid, now, attempt=row.attempt)


def retry_latest(conn: Connection, uuid: str, now: datetime, *, result_id: int | None = None) -> JobRequest:
    """Enqueue the next attempt of the finished job ``uuid``.

    ``result_id``: the attempt the caller means; refused unless it is still
    the newest.  The newest result row is locked first, so of two
    concurrent retries the second sees the first's request and is refused
    (``JobStateError``): exactly one new request."""
    latest = reads_sql.latest_result(conn, uuid)
    if latest is None:
        active = reads_sql.active_request(conn, uuid)
        if active is not None:
            raise JobStateError(f"Job {uuid} is {active.state}; only finished jobs can be retried.")
        raise JobNotFound(f"No result has uuid {uuid}. List results with `jobtable results`.")
    previous = operations_sql.lock_result(conn, latest.id)
    if previous is None:
        raise JobNotFound(f"The result of {uuid} was deleted meanwhile.")
    # Read again under the lock: a retry that committed while we waited for
    # it is visible now.
    active = reads_sql.active_request(conn, uuid)
    if active is not None:
        raise JobStateError(f"Job {uuid} is {active.state}; only finished jobs can be retried.")
    newest = reads_sql.latest_result(conn, uuid)
    if newest is None or newest.id != previous.id:
        raise JobStateError(f"Job {uuid} has a newer attempt than the one asked for; retry that one.")
    if result_id is not None and result_id != previous.id:
        raise JobStateError(
            f"Attempt {previous.attempt} of job {uuid} is newer than this result; "
            "only the newest attempt can be retried."
        )
    if previous.message is None:
        # A result the Celery result backend wrote: the message stayed with Celery.
        raise JobStateError(f"Job {uuid} has no stored message to retry (its result came from a Celery worker).")
    if operations_sql.retry_result(conn, previous, now) is None:
        raise JobStateError(
            f"Not retried: another {previous.task_name} job with concurrency key "
            f"{previous.concurrency_key!r} is pending or running."
        )
    row = reads_sql.active_request(conn, uuid)
    assert row is not None  # just inserted, in this transaction
    return JobRequest.from_row(row)


def wait_for(uuid: str, timeout: float | None = None) -> JobResult:
    """Block until job ``uuid`` has finished for good -- its retries too --
    and return its last result (whatever its status: check ``.status``).

    ``timeout``: seconds (0 looks once), or None to wait without limit;
    past it ``TimeoutError``.  An unknown uuid raises ``JobNotFound``.
    Woken by the result table's NOTIFY on PostgreSQL and by SQLite's data
    version (``db/notify.Listener``), and looking again every
    ``result_wait.WAIT_CAP`` seconds in case a notification was missed."""
    return JobResult.from_row(result_wait.final_row(uuid, timeout))
