"""Job instances into the queue: the call's options, ``should_enqueue`` and
its locks, routed queues, and the insert (one lean statement for a single
job).  The rows themselves are built by ``job_rows.py``."""

from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from . import job_rows, limits, messages, telemetry
from .db import engine as db_engine
from .db import retry as db_retry
from .db import clock, enqueue_sql, single_insert, tables
from .exceptions import EnqueueError

# BaseJob, not jobs.Job: jobs.py calls this module, so what both need of a
# Job lives below both (jobbase.py).  Every jobtable.Job is a BaseJob.
from .jobbase import BaseJob, JobRequest, enqueue_lock_name, overrides

Delay = job_rows.Delay
encode_arguments = job_rows.encode_arguments  # scheduling.py, tests

MAX_NAME = limits.MAX_NAME


def _source(jobs: list[BaseJob]) -> str:
    """How errors about the whole call name it."""
    return type(jobs[0]).__qualname__ if len(jobs) == 1 else "run_in_worker_many()"


def run_in_worker_many(
    jobs: Sequence[BaseJob],
    *,
    queue: str | None = None,
    delay: Delay = None,
    priority: int | None = None,
    retries: int | None = None,
    concurrency_key: str | None = None,
    unique_key: str | None = None,
    connection: Any = None,
) -> list[JobRequest | None]:
    """Enqueue many jobs in one round trip per batch of rows.

    When a job class overrides ``should_enqueue``, the batch is inserted row
    by row under the lock instead, so that each check sees the jobs accepted
    before it.  Options apply to every job (each job's ``default_*`` methods fill in the
    rest).  Returns one entry per job, in order: its request, or None when
    its concurrency key was taken or ``should_enqueue`` said no.
    """
    return enqueue(
        list(jobs),
        queue=queue,
        delay=delay,
        priority=priority,
        retries=retries,
        concurrency_key=concurrency_key if concurrency_key is not None else unique_key,
        connection=connection,
    )


def enqueue(
    jobs: list[BaseJob],
    *,
    queue: str | None,
    delay: Delay,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
    connection: Any,
    retry_attempt: int = 0,
) -> list[JobRequest | None]:
    for job in jobs:
        if not isinstance(job, BaseJob):
            raise EnqueueError(f"run_in_worker_many() takes Job instances, got {type(job).__name__}.")
    if not jobs:
        return []
    if len(jobs) == 1 and delay is None and concurrency_key is None and not retry_attempt:
        lean = _enqueue_one(jobs[0], queue, priority, retries, connection)
        if lean is not _GENERAL:
            return [lean]
    task_ids = [messages.new_task_id()] if len(jobs) == 1 else job_rows.task_ids_for(len(jobs))
    span_queue = queue if queue is not None else jobs[0].resolved_queue()
    with telemetry.send_span(str(span_queue), jobs[0].job_name(), task_ids) as trace_headers:
        return _enqueue(
            jobs, task_ids, trace_headers, queue, delay, priority, retries, concurrency_key, connection, retry_attempt
        )


def _enqueue(
    jobs: list[BaseJob],
    task_ids: list[str],
    trace_headers: dict[str, str],
    queue: str | None,
    delay: Delay,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
    connection: Any,
    retry_attempt: int,
) -> list[JobRequest | None]:
    now = clock.utcnow()
    source = _source(jobs)
    run_at = job_rows.run_at_of(delay, now, source)
    attempt = limits.check_int("retry_attempt", retry_attempt, 0, limits.INT32_MAX - 1, source=source) + 1
    if len(jobs) == 1:
        rows = [job_rows.build_row(jobs[0], task_ids[0], trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt)]
    else:
        rows = job_rows.build_rows(jobs, task_ids, trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt)

    # should_enqueue() needs its lock only when a job class overrides it:
    # otherwise the unique index is the limit (one per key), lock-free.
    # Asked once per class of the call, not per job (a bulk call's jobs are
    # mostly of one class).
    custom: dict[type, bool] = {}  # class -> whether it overrides get_enqueue_lock too
    for job in {type(job): job for job in jobs}.values():
        if overrides(job, "should_enqueue"):
            custom[type(job)] = overrides(job, "get_enqueue_lock")
    checked = [job for job in jobs if type(job) in custom] if custom else []
    # Locks of the class's own (get_enqueue_lock overridden) are held around
    # the whole transaction; the database's default one is taken inside it.
    own_locks = {
        enqueue_lock_name(row["task_name"], row["concurrency_key"] or ""): (job, row["concurrency_key"] or "")
        for job, row in zip(jobs, rows)
        if custom.get(type(job))
    } if custom else {}

    # Routed queues (broker_routes, issue 18): a job that can go straight
    # to the broker is published now, confirmed; the table keeps what must
    # wait (a delay) or be counted (a concurrency key, its own
    # should_enqueue), which the worker's relay publishes when due.
    table_jobs, table_rows = jobs, rows
    published: dict[str, int] = {}
    from .settings import get_settings

    routes = get_settings().broker_routes
    if routes:
        direct = [
            i for i, (job, row) in enumerate(zip(jobs, rows))
            if row["queue"] in routes and row["state"] == tables.PENDING and not row["concurrency_key"]
            and type(job) not in custom
        ]
        if direct:
            from .routing import publish  # Kombu is imported only by those who route

            publish.publish_rows([rows[i] for i in direct])
            published = {rows[i]["task_id"]: 0 for i in direct}  # id 0: not a row of the table
            table_jobs = [job for job, row in zip(jobs, rows) if row["task_id"] not in published]
            table_rows = [row for row in rows if row["task_id"] not in published]
    table_ids = [row["task_id"] for row in table_rows]

    def write(conn: Connection, retrying: bool = False) -> dict[str, int]:
        # retrying: the first attempt's connection died, maybe after its
        # commit; what it wrote is found by task id and not written again.
        written = enqueue_sql.written_task_ids(conn, table_ids) if retrying else {}
        todo = [(job, row) for job, row in zip(table_jobs, table_rows) if row["task_id"] not in written]
        if not todo:
            return written
        if not checked:
            written.update(enqueue_sql.insert_requests(conn, [row for _, row in todo]))
            return written
        database_locks = [
            enqueue_lock_name(row["task_name"], row["concurrency_key"] or "")
            for job, row in todo
            if type(job) in custom and not custom[type(job)]
        ]
        if database_locks:
            enqueue_sql.lock_for_enqueue(conn, database_locks)
        # Row by row, so each should_enqueue() sees the jobs accepted before it.
        for job, row in todo:
            if type(job) not in custom or _should_enqueue(job, row, conn):
                written.update(enqueue_sql.insert_requests(conn, [row]))
        return written

    with ExitStack() as held:
        # Sorted, and each (class, key) once: two bulk enqueues cannot
        # deadlock, and a lock that is not reentrant is not taken twice.
        for name in sorted(own_locks):
            job, key = own_locks[name]
            held.enter_context(job.get_enqueue_lock(key))
        inserted = (
            _in_transaction(connection, write, autocommit=not checked and len(table_rows) <= 1) if table_rows else {}
        )
    inserted.update(published)

    out: list[JobRequest | None] = []
    for row in rows:
        row_id = inserted.get(row["task_id"])
        if row_id is None:
            out.append(None)
            continue
        out.append(JobRequest.from_row(SimpleNamespace(id=row_id, **row)))
    return out


# -- the single enqueue's lean path (issue 13) --------------------------------

#: ``_enqueue_one``'s answer when the call needs the general path.
_GENERAL: Any = object()
#: Per job class: whether its instances may take the lean path at all (no
#: ``should_enqueue`` of its own).
_LEAN_CLASS: dict[type, bool] = {}
def _enqueue_one(
    job: BaseJob, queue: str | None, priority: int | None, retries: int | None, connection: Any
) -> Any:
    """One job, no delay, no key: its row from the class's template
    (``job_rows.single_row``) and one INSERT -- in autocommit
    (``db/single_insert.py`` on PostgreSQL), or one statement in the
    caller's transaction (``connection=``).  ``_GENERAL`` when the call
    needs the general path: a class with its own ``should_enqueue``, a
    concurrency key, a routed queue (``broker_routes``), tracing on, or
    values that are not plain ``str``/``int`` (the general path's checks
    name what is wrong).  What is stored is what the general path stores."""
    from .settings import get_settings

    cls = type(job)
    lean = _LEAN_CLASS.get(cls)
    if lean is None:
        lean = _LEAN_CLASS[cls] = not overrides(job, "should_enqueue")
    if not lean or telemetry.enabled():
        return _GENERAL
    try:
        queue = job.resolved_queue() if queue is None else queue
        priority = job.resolved_priority() if priority is None else priority
        retries = job.resolved_retries() if retries is None else retries
        if job.resolved_concurrency_key() != "":
            return _GENERAL
    except Exception:  # a hook that raises: the general path raises it as it always did
        return _GENERAL
    if type(queue) is not str or type(priority) is not int or type(retries) is not int:
        return _GENERAL
    settings = get_settings()
    if settings.broker_routes and queue in settings.broker_routes:
        return _GENERAL  # routing.publish sends it to the broker
    if connection is not None:
        conn = _as_connection(connection)
        db_engine.check_schema(conn.engine, conn)
        row = job_rows.single_row(job, messages.new_task_id(), clock.utcnow(), queue, priority, retries, settings)
        row_id = enqueue_sql.insert_requests(conn, [row]).get(row["task_id"])
    else:
        engine = db_engine.get_engine()
        db_engine.check_schema(engine)
        row = job_rows.single_row(job, messages.new_task_id(), clock.utcnow(), queue, priority, retries, settings)
        row_id = _insert_one(engine, row)
    if row_id is None:
        return None
    return JobRequest.from_row(SimpleNamespace(id=row_id, **row))


def _insert_one(engine: Any, row: dict[str, Any]) -> int | None:
    """The row's id (None: skipped), in its own transaction, with the one
    retry of ``db/retry.py`` when the pooled connection had died."""
    table_ids = [row["task_id"]]

    def write(conn: Connection, retrying: bool = False) -> dict[str, int]:
        written = enqueue_sql.written_task_ids(conn, table_ids) if retrying else {}
        if not written:
            written = enqueue_sql.insert_requests(conn, [row])
        return written

    if single_insert.usable(engine):
        try:
            return single_insert.insert(engine, row)
        except sa_exc.DBAPIError as exc:
            if not db_retry.is_disconnect(exc):
                raise
            db_retry.log_retry(exc)
            written = db_retry.write_retrying(engine, write, retried=True)
    else:
        written = db_retry.write_retrying(engine, write, autocommit=True)
    return written.get(row["task_id"])


def _should_enqueue(job: BaseJob, row: dict[str, Any], conn: Connection) -> bool:
    job._enqueue_connection = conn
    try:
        return bool(job.should_enqueue(row["concurrency_key"] or ""))
    finally:
        job._enqueue_connection = None


def _in_transaction(
    connection: Any, write: Callable[[Connection, bool], dict[str, int]], *, autocommit: bool
) -> dict[str, int]:
    if connection is None:
        # Our own transaction (a single statement in autocommit mode): one
        # retry if the pooled connection was dead, e.g. after a restart.
        return db_retry.write_retrying(db_engine.get_engine(), write, autocommit=autocommit)
    conn = _as_connection(connection)
    # The caller's transaction: commit and rollback are theirs.
    db_engine.check_schema(conn.engine, conn)
    return write(conn, False)


def _as_connection(connection: Any) -> Connection:
    if isinstance(connection, Connection):
        return connection
    get_connection = getattr(connection, "connection", None)
    if callable(get_connection):  # a SQLAlchemy Session
        conn = get_connection()
        if isinstance(conn, Connection):
            return conn
    raise EnqueueError(
        f"connection= takes a SQLAlchemy Connection or Session, got {type(connection).__name__}."
    )


