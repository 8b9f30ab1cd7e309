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
``db/operations_sql``; this module only chooses and converts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.sql import Select

from .db import cancels_sql, clock, operations_sql, reads_sql, tables, workers_sql
from .db import engine as db_engine
from .db.notify import Listener
from .exceptions import JobNotFound, JobStateError

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

#: Rows read per transaction when a query is iterated.
PAGE_SIZE = 500
#: Longest single wait between two looks at the database in ``wait()``: a
#: notification can be missed (PgBouncer in transaction mode, a reconnect),
#: so the result is read again at least this often.
WAIT_CAP = 5.0

WAITING_STATES = (tables.SCHEDULED, tables.PENDING)

_T = TypeVar("_T")
_Q = TypeVar("_Q", bound="_Query[Any]")


# -- shared ----------------------------------------------------------------------------
@contextmanager
def _reading(engine: Engine | None = None) -> Iterator[Connection]:
    """A read transaction.  On SQLite it is DEFERRED: reading (a ``wait()``
    woken by every commit, a walk through the results) must not take the
    writers' lock that jobtable's own transactions take at BEGIN."""
    with db_engine.connect(engine) as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        with conn.begin():
            yield conn




class _QueryAttribute(Generic[_Q]):
    """``JobResult.query`` (as plain's models have): a fresh query each time."""

    def __init__(self, make: Callable[[], _Q]) -> None:
        self._make = make

    def __get__(self, obj: object, owner: type | None = None) -> _Q:
        return self._make()


class _ByUuid:
    """What a waiting or running job can do: read its result, wait, cancel."""

    uuid: str

    def result(self) -> JobResult | None:
        """The newest finished attempt of this job, if any (no waiting)."""
        with _reading() as conn:
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


# -- queries ---------------------------------------------------------------------------


def _job_name(job_class: str | type) -> str:
    if isinstance(job_class, str):
        return job_class
    name_of = getattr(job_class, "job_name", None)
    if name_of is None:
        raise TypeError(f"job_class={job_class!r}: give a registered job name or a Job class.")
    return str(name_of())


def _choices(name: str, value: str | Iterable[str], allowed: tuple[str, ...], *, upper: bool) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    out = tuple(v.upper() if upper and isinstance(v, str) else v for v in values)
    bad = [v for v in out if v not in allowed]
    if bad:
        raise ValueError(f"{name}={bad[0]!r} is not one of {', '.join(allowed)}.")
    return out


class _Query(Generic[_T]):
    """Filters, immutable: each ``filter`` returns a new query.  Newest
    first (by row id); runs on ``using(conn)``'s connection, else each read
    in a transaction of its own."""

    _table: ClassVar[Table]

    def __init__(self, filters: dict[str, Any] | None = None, connection: Connection | None = None) -> None:
        self._filters: dict[str, Any] = dict(filters or {})
        self._connection = connection

    # -- building ----------------------------------------------------------------------

    def _with(self: _Q, **filters: Any) -> _Q:
        merged = dict(self._filters)
        merged.update({k: v for k, v in filters.items() if v is not None})
        return type(self)(merged, self._connection)

    def _common(
        self: _Q,
        job_class: str | type | None,
        queue: str | None,
        concurrency_key: str | None,
        uuid: str | None,
    ) -> _Q:
        return self._with(
            task_name=None if job_class is None else _job_name(job_class),
            queue=queue,
            concurrency_key=concurrency_key,
            task_id=uuid,
        )

    def using(self: _Q, connection: Connection) -> _Q:
        """The same query on ``connection`` (its transaction, e.g. inside
        ``should_enqueue`` or the application's own)."""
        return type(self)(self._filters, connection)

    def _select(self) -> Select[Any]:
        raise NotImplementedError

    def _convert(self, row: Row[Any]) -> _T:
        raise NotImplementedError

    # -- reading -----------------------------------------------------------------------

    def _run(self, fn: Callable[[Connection], Any]) -> Any:
        if self._connection is not None:
            return fn(self._connection)
        with _reading() as conn:
            return fn(conn)

    def count(self) -> int:
        return int(self._run(lambda conn: reads_sql.count(conn, self._select())))

    def exists(self) -> bool:
        return bool(self._run(lambda conn: reads_sql.exists(conn, self._select())))

    def first(self) -> _T | None:
        """The newest match, or None."""
        page = self.page(limit=1)
        return page[0] if page else None

    def page(self, *, limit: int = PAGE_SIZE, before_id: int | None = None) -> list[_T]:
        """Up to ``limit`` matches, newest first, those with an id below
        ``before_id`` only (pass the last one's id for the next page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit={limit!r}: give a whole number of rows, 1 or more.")
        rows = self._run(
            lambda conn: reads_sql.newest_page(conn, self._select(), self._table, before_id=before_id, limit=limit)
        )
        return [self._convert(row) for row in rows]

    def pages(self, size: int = PAGE_SIZE) -> Iterator[list[_T]]:
        """Every match, newest first, ``size`` at a time; each page is read
        in a transaction of its own (keyset on the id), so a long walk never
        holds one open."""
        before: int | None = None
        while True:
            page = self.page(limit=size, before_id=before)
            if page:
                yield page
            if len(page) < size:
                return
            before = getattr(page[-1], "id")

    def all(self) -> list[_T]:
        return [item for page in self.pages() for item in page]

    def __iter__(self) -> Iterator[_T]:
        for page in self.pages():
            yield from page

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._filters}>"


class RequestQuery(_Query["JobRequest"]):
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
            query = query._with(states=_choices("state", state, reads_sql.SHOWN_STATES, upper=False))
        return query

    def _select(self) -> Select[Any]:
        filters = dict(self._filters)
        states = filters.pop("states", reads_sql.SHOWN_STATES)
        return reads_sql.requests_select(states=states, split_running=True, **filters)

    def _convert(self, row: Row[Any]) -> JobRequest:
        return JobRequest.from_row(row)


class ProcessQuery(_Query["JobProcess"]):
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


class ResultQuery(_Query["JobResult"]):
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
            query = query._with(statuses=_choices("status", status, tables.RESULT_STATUSES, upper=True))
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
    query: ClassVar[_QueryAttribute[RequestQuery]] = _QueryAttribute(RequestQuery)

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
        with _reading() as conn:
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
    query: ClassVar[_QueryAttribute[ProcessQuery]] = _QueryAttribute(ProcessQuery)

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
        with _reading() as conn:
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
    query: ClassVar[_QueryAttribute[ResultQuery]] = _QueryAttribute(ResultQuery)

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


def _checked_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"wait(timeout={timeout!r}): give seconds as a number, or None to wait without limit.")
    if math.isnan(timeout):
        raise ValueError("wait(timeout=nan): give seconds as a number, or None to wait without limit.")
    if math.isinf(timeout):
        raise ValueError(f"wait(timeout={timeout!r}): use timeout=None to wait without limit.")
    if timeout < 0:
        raise ValueError(f"wait(timeout={timeout!r}): the timeout must be 0 (look once) or more seconds.")
    return float(timeout)


def _final_result(conn: Connection, uuid: str) -> Row[Any] | None:
    """The job's last result if it has finished for good, else None.

    The request is read before the result: a job with neither (at the time
    of each read) is unknown, since a running job's result and the end of
    its request are one commit.  A result marked ``retried`` whose retry is
    gone (purged) is final too."""
    if reads_sql.active_request(conn, uuid) is not None:
        return None
    latest = reads_sql.latest_result(conn, uuid)
    if latest is None:
        raise JobNotFound(f"No job has uuid {uuid} (neither waiting, running nor finished).")
    if latest.retried:
        if reads_sql.active_request(conn, uuid) is not None:
            return None
        latest = reads_sql.latest_result(conn, uuid) or latest
    return latest


def wait_for(uuid: str, timeout: float | None = None) -> JobResult:
    """Block until job ``uuid`` has finished for good -- its retries too --
    and return its last result (whatever its status: check ``.status``).

    ``timeout``: seconds (0 looks once), or None to wait without limit;
    past it ``TimeoutError``.  An unknown uuid raises ``JobNotFound``.
    Woken by the result table's NOTIFY on PostgreSQL and by SQLite's data
    version (``db/notify.Listener``), and looking again every ``WAIT_CAP``
    seconds in case a notification was missed."""
    limit = _checked_timeout(timeout)
    deadline = None if limit is None else time.monotonic() + limit
    engine = db_engine.get_engine()
    listener: Listener | None = None
    try:
        while True:
            with _reading(engine) as conn:
                row = _final_result(conn, uuid)
            if row is not None:
                return JobResult.from_row(row)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"Job {uuid} has not finished within {timeout} s.")
            if listener is None:
                # Listening before the next read: a result written between
                # that read and the wait still wakes us.
                listener = Listener.create(engine, [], channel=tables.RESULT_CHANNEL)
                continue
            listener.wait(WAIT_CAP if remaining is None else min(remaining, WAIT_CAP))
    finally:
        if listener is not None:
            listener.close()
