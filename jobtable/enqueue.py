"""Turning Job instances into queue rows: validation, encoding, locking, insert."""

from __future__ import annotations

import functools
import inspect
import os
from contextlib import ExitStack
from types import SimpleNamespace
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Union

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from . import limits, message_checks, messages, params, telemetry
from .db import engine as db_engine
from .db import retry as db_retry
from .db import clock, enqueue_sql, single_insert, tables
from .exceptions import EnqueueError

# BaseJob, not jobs.Job: jobs.py calls this module, so what both need of a
# Job lives below both (jobbase.py).  Every jobtable.Job is a BaseJob.
from .jobbase import BaseJob, JobRequest, enqueue_lock_name, overrides

Delay = Union[int, float, timedelta, datetime, None]

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
    task_ids = [messages.new_task_id()] if len(jobs) == 1 else _task_ids(len(jobs))
    span_queue = queue if queue is not None else jobs[0].resolved_queue()
    with telemetry.send_span(str(span_queue), jobs[0].job_name(), task_ids) as trace_headers:
        return _enqueue(
            jobs, task_ids, trace_headers, queue, delay, priority, retries, concurrency_key, connection, retry_attempt
        )


#: The uuid4 variant digit (RFC 4122: binary 10xx) for a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _task_ids(n: int) -> list[str]:
    """``n`` new task ids, each the text of a random (version 4) UUID, as
    ``messages.new_task_id`` gives: one read of the system's random source
    for the batch instead of one ``uuid.uuid4()`` object per job."""
    digits = os.urandom(16 * n).hex()
    return [
        f"{digits[i:i + 8]}-{digits[i + 8:i + 12]}-4{digits[i + 13:i + 16]}-"
        f"{_VARIANT[digits[i + 16]]}{digits[i + 17:i + 20]}-{digits[i + 20:i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


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
    run_at = _run_at(delay, now, source)
    attempt = limits.check_int("retry_attempt", retry_attempt, 0, limits.INT32_MAX - 1, source=source) + 1
    if len(jobs) == 1:
        rows = [_row(jobs[0], task_ids[0], trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt)]
    else:
        rows = _rows(jobs, task_ids, trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt)

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
#: ``_single_row``'s templates, per (class, queue, priority, retries), for
#: the settings object they were built under (``max_message_size``).
_SINGLE: dict[tuple[Any, ...], tuple[dict[str, Any], list[str], list[str] | None]] = {}
_single_settings: list[Any] = [None]
#: Templates kept at most (classes made at run time must not grow it forever).
_SINGLE_MAX = 1024


def _enqueue_one(
    job: BaseJob, queue: str | None, priority: int | None, retries: int | None, connection: Any
) -> Any:
    """One job, no delay, no key: its row from the class's template
    (``_single_row``) and one INSERT -- in autocommit
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
        row = _single_row(job, messages.new_task_id(), clock.utcnow(), queue, priority, retries, settings)
        row_id = enqueue_sql.insert_requests(conn, [row]).get(row["task_id"])
    else:
        engine = db_engine.get_engine()
        db_engine.check_schema(engine)
        row = _single_row(job, messages.new_task_id(), clock.utcnow(), queue, priority, retries, settings)
        row_id = _insert_one(engine, row)
    if row_id is None:
        return None
    return JobRequest.from_row(SimpleNamespace(id=row_id, **row))


def _single_row(
    job: BaseJob, task_id: str, now: datetime, queue: str, priority: int, retries: int, settings: Any
) -> dict[str, Any]:
    """``_row(job, task_id, {}, now, now, queue, priority, retries, None)``,
    built from a per-class template: the first job of each (class, queue,
    priority, retries) goes through ``_row`` (every check); later ones only
    fill in their task id and arguments (as a batch's jobs do, ``_rows``)."""
    if _single_settings[0] is not settings:
        _SINGLE.clear()
        _single_settings[0] = settings
    key = (type(job), queue, priority, retries)
    group = _SINGLE.get(key)
    if group is not None:
        template, parts, bare = group
        text = _filled(job, task_id, parts, bare, settings.max_message_size)
        if text is not None:
            row = dict(template)
            row["task_id"] = task_id
            row["message"] = text
            row["run_at"] = row["created_at"] = now
            return row
    row = _row(job, task_id, {}, now, now, queue, priority, retries, None)
    if group is None:
        if len(_SINGLE) >= _SINGLE_MAX:
            _SINGLE.clear()
        parts = _template(job, {}, now, now, row, 1)
        _SINGLE[key] = (dict(row), parts, _without_arguments(parts))
    return row


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


# -- validation and encoding ---------------------------------------------------


def _run_at(delay: Delay, now: datetime, source: str) -> datetime:
    if delay is None:
        return now
    if isinstance(delay, datetime):
        return max(limits.check_time("delay", delay, source=source), now)
    return limits.time_after(now, "delay", delay, source=source)


def _row(
    job: BaseJob,
    task_id: str,
    trace_headers: dict[str, str],
    now: datetime,
    run_at: datetime,
    queue: str | None,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
    attempt: int = 1,
) -> dict[str, Any]:
    task_name = job.job_name()
    source = type(job).__qualname__
    queue = limits.check_name("queue", queue if queue is not None else job.resolved_queue(), source=source)
    priority = limits.check_int(
        "priority",
        priority if priority is not None else job.resolved_priority(),
        tables.PRIORITY_MIN,
        tables.PRIORITY_MAX,
        source=source,
    )
    retries = limits.check_int(
        "retries", retries if retries is not None else job.resolved_retries(), 0, limits.INT32_MAX, source=source
    )
    key = limits.check_name(
        "concurrency_key",
        concurrency_key if concurrency_key is not None else job.resolved_concurrency_key(),
        source=source,
        allow_empty=True,
    )
    args, kwargs = encode_arguments(job)
    envelope = messages.task_message(
        task_name=task_name,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        eta=run_at if run_at > now else None,
        attempt=attempt,
        retries=retries,
        concurrency_key=key or None,
        custom_limit=overrides(job, "should_enqueue"),
        extra_headers=trace_headers,
    )
    return message_checks.checked_row(envelope, queue, now, source=source, arg_names=_positional_names(type(job)))


#: Stands for a job's own values in a batch's message template (see _rows):
#: random per process, so no other part of a message can contain it.
_MARK = f"jobtable-{messages.new_task_id()}-"
_ID, _ARGSREPR, _KWARGSREPR, _BODY = (f"{_MARK}{i}" for i in range(4))


def _rows(
    jobs: list[BaseJob],
    task_ids: list[str],
    trace_headers: dict[str, str],
    now: datetime,
    run_at: datetime,
    queue: str | None,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
    attempt: int,
) -> list[dict[str, Any]]:
    """``_row`` of every job, the batch's per-job Python work cut to what
    differs between its jobs.

    Jobs of one class with the same queue, priority, retries and key get
    messages that differ only in the task id, the body and the argument
    reprs: the first job of each such group goes through ``_row`` (every
    check), and the group's message is dumped once as a template whose
    placeholders the others fill in.  The text is the same as
    ``json.dumps`` of each job's envelope would be (the placeholders are
    whole JSON strings, replaced by JSON strings).  A job whose text is not
    UTF-8 or over ``max_message_size`` goes through ``_row``, which refuses
    it with the error naming the part.
    """
    from .settings import get_settings

    limit = get_settings().max_message_size
    groups: dict[Any, tuple[dict[str, Any], list[str], list[str] | None]] = {}
    # The group key of a class whose queue, priority, retries and key do not
    # depend on the instance (given by the call, or BaseJob's defaults):
    # asked once per class, not four hooks per job.
    static: dict[type, Any] = {}  # None: the class's key depends on the instance
    rows: list[dict[str, Any]] = []
    for job, task_id in zip(jobs, task_ids):
        cls = type(job)
        key = static.get(cls)
        try:
            if key is None:
                key = (
                    cls,
                    queue if queue is not None else job.resolved_queue(),
                    priority if priority is not None else job.resolved_priority(),
                    retries if retries is not None else job.resolved_retries(),
                    concurrency_key if concurrency_key is not None else job.resolved_concurrency_key(),
                )
                if cls not in static:
                    static[cls] = key if _instance_free(job, queue, priority, retries, concurrency_key) else None
            group = groups.get(key)
        except TypeError:  # an unhashable value: _row names what is wrong
            key, group = None, None
        if group is None:
            row = _row(job, task_id, trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt)
            rows.append(row)
            if key is not None:
                parts = _template(job, trace_headers, now, run_at, row, attempt)
                groups[key] = (dict(row), parts, _without_arguments(parts))
            continue
        template, parts, bare = group
        text = _filled(job, task_id, parts, bare, limit)
        if text is None:
            rows.append(_row(job, task_id, trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt))
            continue
        row = dict(template)
        row["task_id"] = task_id
        row["message"] = text
        rows.append(row)
    return rows


def _filled(job: BaseJob, task_id: str, parts: list[str], bare: list[str] | None, limit: int) -> str | None:
    """The message of ``job`` from its group's template (see ``_rows``), or
    None when it is not UTF-8 or over ``limit`` bytes: ``_row`` then refuses
    it with the error naming the part."""
    if bare is not None and not job._init_args and not job._init_kwargs:
        # No arguments: only the task id differs (ASCII), and the text is
        # no longer than the group's first job's, which _row checked.
        return f'"{task_id}"'.join(bare)
    args, kwargs = encode_arguments(job)
    if args or kwargs:
        fill = {
            _ARGSREPR: messages.dumps(messages.argsrepr(args)),
            _KWARGSREPR: messages.dumps(messages.argsrepr(kwargs)),
            _BODY: messages.dumps(messages.dumps([args, kwargs, _EMBED])),
        }
    else:
        fill = dict(_NO_ARGUMENTS)
    # Our own uuid4 text: nothing in it for JSON to escape.
    fill[_ID] = f'"{task_id}"'
    text = "".join([fill.get(part, part) for part in parts])
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return None
    return None if size > limit else text


#: The hooks behind each part of a batch group's key (see _rows).
_KEY_HOOKS = (
    ("resolved_queue", "get_queue", "default_queue"),
    ("resolved_priority", "get_priority", "default_priority"),
    ("resolved_retries", "get_retries", "default_retries"),
    ("resolved_concurrency_key", "get_unique_key", "default_concurrency_key"),
)


def _instance_free(job: BaseJob, *given: Any) -> bool:
    """Whether every part of ``job``'s group key is the same for all
    instances of its class: given by the call, or none of its hooks
    overridden (BaseJob's return constants)."""
    return all(
        value is not None or not any(overrides(job, hook) for hook in hooks) for value, hooks in zip(given, _KEY_HOOKS)
    )


def _without_arguments(parts: list[str]) -> list[str] | None:
    """The message of a group's job without arguments, split around its
    task id (``f'"{task_id}"'.join(...)`` gives it whole), or None when
    the template is not the expected one."""
    if parts.count(_ARGSREPR) != 1 or parts.count(_KWARGSREPR) != 1 or parts.count(_BODY) != 1:
        return None
    text = "".join([_NO_ARGUMENTS.get(part, part) for part in parts])
    return text.split(_ID_FILLER)


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Stands for _ID in a joined text, to split it on (see _MARK).
_ID_FILLER = f"{_MARK}id"
_NO_ARGUMENTS = {
    _ID: _ID_FILLER,
    _ARGSREPR: messages.dumps(messages.argsrepr([])),
    _KWARGSREPR: messages.dumps(messages.argsrepr({})),
    _BODY: messages.dumps(messages.dumps([[], {}, _EMBED])),
}


def _template(
    job: BaseJob, trace_headers: dict[str, str], now: datetime, run_at: datetime, row: dict[str, Any], attempt: int
) -> list[str]:
    """The message of ``row``'s group, split around its placeholders: the
    parts, each placeholder one part of its own."""
    envelope = messages.task_message(
        task_name=row["task_name"],
        task_id=_ID,
        args=[],
        kwargs={},
        queue=row["queue"],
        priority=row["priority"],
        eta=run_at if run_at > now else None,
        attempt=attempt,
        retries=row["retries"],
        concurrency_key=row["concurrency_key"],
        custom_limit=overrides(job, "should_enqueue"),
        extra_headers=trace_headers,
    )
    envelope["headers"]["argsrepr"] = _ARGSREPR
    envelope["headers"]["kwargsrepr"] = _KWARGSREPR
    envelope["body"] = _BODY
    text = messages.dumps(envelope)
    parts: list[str] = []
    for piece in text.split(f'"{_MARK}'):
        if parts:
            # piece starts with the placeholder's number and its closing quote.
            number, rest = piece.split('"', 1)
            parts.append(_MARK + number)
            parts.append(rest)
        else:
            parts.append(piece)
    return parts


def encode_arguments(job: BaseJob) -> tuple[list[Any], dict[str, Any]]:
    """The job's ``__init__`` arguments as JSON-safe values, with errors that
    name the argument."""
    cls = type(job)
    names = _positional_names(cls)
    try:
        args = [
            params.encode(value, f"{cls.__qualname__} argument {names[i] if i < len(names) else i!r}")
            for i, value in enumerate(job._init_args)
        ]
        kwargs = {
            key: params.encode(value, f"{cls.__qualname__} argument {key!r}")
            for key, value in job._init_kwargs.items()
        }
    except params.ParameterError as exc:
        raise params.ParameterError(str(exc)) from None
    return args, kwargs


@functools.cache
def _positional_names(cls: type) -> list[str]:
    # Cached: inspect.signature parses text for C-level __init__s, which would
    # otherwise cost more per enqueue than the INSERT.
    try:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return []
    return [
        repr(p.name)
        for p in list(signature.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
