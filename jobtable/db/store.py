"""The queue's SQL: every statement jobtable runs against its tables.

Functions take a Connection inside a transaction chosen by the caller, so
they compose: an enqueue can join the application's own transaction, and a
worker can finish a job and enqueue its retry atomically.
Dialect-specific parts come from ``dialects.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Select

from .. import messages
from . import dialects, tables
from .dialects import INSERT_BATCH, dialect_of

request = tables.request
result = tables.result

ACTIVE_STATES = (tables.SCHEDULED, tables.PENDING, tables.RUNNING)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- enqueue -------------------------------------------------------------------


def insert_requests(conn: Connection, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert request rows, skipping those whose concurrency key is taken.

    Returns ``{task_id: id}`` of the rows inserted.  One round trip per
    ``INSERT_BATCH`` rows.
    """
    dialect = dialect_of(conn)
    inserted: dict[str, int] = {}
    for start in range(0, len(rows), INSERT_BATCH):
        for row in dialect.insert_requests(conn, rows[start : start + INSERT_BATCH]):
            inserted[row.task_id] = row.id
    return inserted


def written_task_ids(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """``{task_id: id}`` of the enqueues already in the table: a request row
    (its id), or -- already run -- a result row (the result's id).  The
    check before a retried enqueue (see ``db/retry.py``)."""
    if not task_ids:
        return {}
    found: dict[str, int] = {}
    stmt = select(request.c.task_id, request.c.id).where(request.c.task_id.in_(list(task_ids)))
    for row in conn.execute(stmt):
        found[row.task_id] = row.id
    missing = [task_id for task_id in task_ids if task_id not in found]
    if missing:
        stmt = select(result.c.task_id, result.c.id).where(result.c.task_id.in_(missing))
        for row in conn.execute(stmt):
            found.setdefault(row.task_id, row.id)
    return found


def written_messages(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """The ``(task_id, queue)`` pairs of ``keys`` already published: a waiting
    or held row, or a result of that task (a fanout publish writes one row
    per queue under one task id).  The check before a retried publish."""
    if not keys:
        return set()
    task_ids = sorted({task_id for task_id, _ in keys})
    stmt = select(request.c.task_id, request.c.queue).where(request.c.task_id.in_(task_ids))
    found = {(row.task_id, row.queue) for row in conn.execute(stmt)}
    stmt = select(result.c.task_id, result.c.queue).where(result.c.task_id.in_(task_ids))
    found |= {(row.task_id, row.queue) for row in conn.execute(stmt)}
    return found & set(keys)


def lock_for_enqueue(conn: Connection, keys: Sequence[str]) -> None:
    dialect_of(conn).lock_for_enqueue(conn, keys)


# -- claiming (workers and Kombu consumers) -------------------------------------


def promote_due(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Turn scheduled jobs whose time has come into pending ones."""
    due = (
        select(request.c.id)
        .where(request.c.state == tables.SCHEDULED, request.c.run_at <= now)
        .order_by(request.c.run_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(request)
        .where(request.c.id.in_(due.scalar_subquery()))
        .values(state=tables.PENDING)
        .returning(request.c.queue)
    )
    queues = [row.queue for row in conn.execute(stmt)]
    # Wake the consumers of those queues (PostgreSQL, at commit): idle
    # workers, and Kombu channels that found their queues empty.
    dialects.wake_queues(conn, queues)
    return len(queues)


def next_due_at(conn: Connection) -> datetime | None:
    """When the earliest scheduled job becomes due."""
    stmt = select(func.min(request.c.run_at)).where(request.c.state == tables.SCHEDULED)
    return conn.execute(stmt).scalar()


def claim(
    conn: Connection,
    queues: Sequence[str],
    limit: int,
    *,
    worker_id: str,
    now: datetime,
    lease_expires_at: datetime | None = None,
) -> list[Row[Any]]:
    return dialect_of(conn).claim(
        conn,
        queues,
        limit,
        {"worker_id": worker_id, "started_at": now, "lease_expires_at": lease_expires_at},
    )


# -- reading -------------------------------------------------------------------


def requests_select(
    *,
    task_name: str | None = None,
    concurrency_key: str | None = None,
    states: Iterable[str] = ACTIVE_STATES,
    queue: str | None = None,
) -> Select[Any]:
    stmt = select(request).where(request.c.state.in_(list(states)))
    if task_name is not None:
        stmt = stmt.where(request.c.task_name == task_name)
    if concurrency_key is not None:
        stmt = stmt.where(
            request.c.concurrency_key == concurrency_key
            if concurrency_key
            else request.c.concurrency_key.is_(None)
        )
    if queue is not None:
        stmt = stmt.where(request.c.queue == queue)
    return stmt


def count(conn: Connection, stmt: Select[Any]) -> int:
    return int(conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())


def list_requests(
    conn: Connection,
    *,
    queue: str | None = None,
    task_name: str | None = None,
    states: Iterable[str] = ACTIVE_STATES,
    limit: int = 100,
) -> list[Row[Any]]:
    stmt = requests_select(task_name=task_name, states=states, queue=queue)
    stmt = stmt.order_by(request.c.priority.desc(), request.c.id).limit(limit)
    return list(conn.execute(stmt))


def list_results(
    conn: Connection,
    *,
    queue: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    task_id: str | None = None,
    limit: int = 100,
) -> list[Row[Any]]:
    stmt = select(result)
    if queue is not None:
        stmt = stmt.where(result.c.queue == queue)
    if task_name is not None:
        stmt = stmt.where(result.c.task_name == task_name)
    if status is not None:
        stmt = stmt.where(result.c.status == status)
    if task_id is not None:
        stmt = stmt.where(result.c.task_id == task_id)
    stmt = stmt.order_by(result.c.id.desc()).limit(limit)
    return list(conn.execute(stmt))


@dataclass
class QueueStats:
    queue: str
    scheduled: int = 0
    pending: int = 0
    running: int = 0


def stats(conn: Connection) -> tuple[list[QueueStats], dict[str, dict[str, int]]]:
    """Requests by queue and state, and results by queue and status."""
    by_queue: dict[str, QueueStats] = {}
    rows = conn.execute(
        select(request.c.queue, request.c.state, func.count()).group_by(request.c.queue, request.c.state)
    )
    for queue, state, n in rows:
        entry = by_queue.setdefault(queue, QueueStats(queue))
        setattr(entry, state, int(n))
    results: dict[str, dict[str, int]] = {}
    rows = conn.execute(
        select(result.c.queue, result.c.status, func.count()).group_by(result.c.queue, result.c.status)
    )
    for queue, status, n in rows:
        results.setdefault(queue, {})[status] = int(n)
    return sorted(by_queue.values(), key=lambda s: s.queue), results


# -- results -------------------------------------------------------------------


def result_values(
    row: Row[Any], status: str, *, ended_at: datetime, **fields: Any
) -> dict[str, Any]:
    """A ``jobtable_result`` row for one attempt of the request ``row``."""
    values = {
        "task_id": row.task_id,
        "task_name": row.task_name,
        "queue": row.queue,
        "priority": row.priority,
        "attempt": row.attempt,
        "retries": row.retries,
        "concurrency_key": row.concurrency_key,
        "status": status,
        "requested_at": row.created_at,
        "started_at": row.started_at,
        "ended_at": ended_at,
        "worker_id": row.worker_id,
        "message": row.message,
    }
    values.update(fields)
    return values


# -- operating the queue -----------------------------------------------------------


def cancel_pending(conn: Connection, task_id: str, now: datetime) -> Row[Any] | None:
    """Remove a job that has not started and record it CANCELLED.

    Returns the removed request, or None when no pending or scheduled job
    has that id (it may be running or finished).
    """
    stmt = (
        delete(request)
        .where(request.c.task_id == task_id, request.c.state.in_([tables.SCHEDULED, tables.PENDING]))
        .returning(*request.c)
    )
    removed = conn.execute(stmt).first()
    if removed is not None:
        conn.execute(insert(result).values(result_values(removed, tables.CANCELLED, ended_at=now)))
    return removed


def active_request(conn: Connection, task_id: str) -> Row[Any] | None:
    return conn.execute(select(request).where(request.c.task_id == task_id).limit(1)).first()


def latest_result(conn: Connection, task_id: str) -> Row[Any] | None:
    stmt = select(result).where(result.c.task_id == task_id).order_by(result.c.attempt.desc()).limit(1)
    return conn.execute(stmt).first()


def retry_result(conn: Connection, previous: Row[Any], now: datetime, delay_until: datetime | None = None) -> int | None:
    """Enqueue the next attempt of a finished job and link the two.

    Returns the new request id, or None when the job's concurrency key is
    held by another pending or running job.
    """
    attempt = previous.attempt + 1
    try:
        envelope = json.loads(messages.retry_message(previous.message, attempt, delay_until))
        if not isinstance(envelope, dict):
            raise ValueError("not an object")
        row = messages.row_values(envelope, previous.queue, now)
        row["attempt"] = attempt
    except (TypeError, ValueError, AttributeError, RecursionError):
        # A dead letter whose message is still not a JSON envelope: queued
        # again as it is, its columns taken from the result row; if it is
        # still bad it comes back as a dead letter.
        row = _raw_retry_values(previous, attempt, now, delay_until)
    inserted = insert_requests(conn, [row])
    if not inserted:
        return None
    conn.execute(update(result).where(result.c.id == previous.id).values(retried=True))
    return inserted[row["task_id"]]


def _raw_retry_values(previous: Row[Any], attempt: int, now: datetime, run_at: datetime | None) -> dict[str, Any]:
    due = run_at is not None and run_at > now
    return {
        "task_id": previous.task_id,
        "task_name": previous.task_name,
        "queue": previous.queue,
        "priority": previous.priority,
        "state": tables.SCHEDULED if due else tables.PENDING,
        "run_at": run_at if due else now,
        "expires_at": None,
        "concurrency_key": previous.concurrency_key,
        "attempt": attempt,
        "retries": previous.retries,
        "created_at": now,
        "message": previous.message if previous.message is not None else "",
    }


def purge(conn: Connection, queue: str | None = None) -> int:
    """Delete jobs that have not started (running jobs are left to finish)."""
    stmt = delete(request).where(request.c.state.in_([tables.SCHEDULED, tables.PENDING]))
    if queue is not None:
        stmt = stmt.where(request.c.queue == queue)
    return conn.execute(stmt).rowcount


def clear_results(conn: Connection, before: datetime, batch: int = 1000) -> int:
    """Delete up to ``batch`` results that ended before ``before``; on
    SQLite, then fold old 30-second stats rows into hourly ones and prune
    those left at zero (``dialects.compact_result_stats``; PostgreSQL's
    triggers do both)."""
    ids = select(result.c.id).where(result.c.ended_at < before).order_by(result.c.ended_at).limit(batch)
    deleted = conn.execute(delete(result).where(result.c.id.in_(ids.scalar_subquery()))).rowcount
    dialects.compact_result_stats(conn, utcnow())
    return deleted


# -- transport -------------------------------------------------------------------
# SQL of the Kombu transport (jobtable/transport/).  Rows a Kombu consumer
# claims carry ``lease_expires_at``: a consumer that dies stops renewing it and
# any other consumer puts its rows back to pending once it has passed.


def transport_claim(
    conn: Connection,
    queues: Sequence[str],
    limit: int,
    *,
    consumer_id: str,
    now: datetime,
    lease_expires_at: datetime,
    async_commit: bool = False,
) -> list[Row[Any]]:
    """Claim up to ``limit`` pending messages of ``queues`` for a consumer,
    counting the delivery (``deliveries > 1`` means redelivered)."""
    if conn.dialect.name == "postgresql":
        return dialects.transport_claim_pg(
            conn,
            queues,
            limit,
            consumer_id=consumer_id,
            now=now,
            lease_expires_at=lease_expires_at,
            async_commit=async_commit,
        )
    # SQLite: the portable claim (its commits have no asynchronous mode).
    return dialect_of(conn).claim(
        conn,
        queues,
        limit,
        {
            "worker_id": consumer_id,
            "started_at": now,
            "lease_expires_at": lease_expires_at,
            "deliveries": request.c.deliveries + 1,
        },
    )


def _sync_commit_off() -> Any:
    """An always-true condition that turns ``synchronous_commit`` off for the
    statement's own (autocommit) transaction on PostgreSQL: the commit does
    not wait for the WAL flush, in one round trip.  For claims, acks and
    requeues only: a server crash can lose one, which means a redelivery,
    never a lost message."""
    return func.set_config("synchronous_commit", "off", True).is_not(None)


def _maybe_async(conn: Connection, async_commit: bool) -> tuple[Any, ...]:
    return (_sync_commit_off(),) if async_commit and conn.dialect.name == "postgresql" else ()


def _held(ids: Sequence[int], consumer_id: str) -> Any:
    # A consumer only touches rows it still holds: after its lease expired
    # and another consumer took the row, an ack or requeue is a no-op.
    return (
        request.c.id.in_(list(ids)),
        request.c.worker_id == consumer_id,
        request.c.state == tables.RUNNING,
    )


def transport_delete(conn: Connection, ids: Sequence[int], consumer_id: str, async_commit: bool = False) -> int:
    """Ack (or reject without requeue): the message leaves the table."""
    if conn.dialect.name == "postgresql":
        return dialects.transport_delete_pg(conn, ids, consumer_id, async_commit)
    stmt = delete(request).where(*_held(ids, consumer_id), *_maybe_async(conn, async_commit))
    return conn.execute(stmt).rowcount


def transport_requeue(
    conn: Connection, ids: Sequence[int], consumer_id: str, async_commit: bool = False
) -> list[str]:
    """Put held messages back to pending, in place (same row, same id, so
    they keep their place in the queue).  Returns the queues touched."""
    stmt = (
        update(request)
        .where(*_held(ids, consumer_id), *_maybe_async(conn, async_commit))
        .values(state=tables.PENDING, worker_id=None, started_at=None, lease_expires_at=None)
        .returning(request.c.queue)
    )
    return sorted({row.queue for row in conn.execute(stmt)})


def transport_renew(
    conn: Connection, ids: Sequence[int], consumer_id: str, until: datetime, async_commit: bool = False
) -> int:
    """Extend the lease of messages a live consumer still holds."""
    stmt = (
        update(request)
        .where(*_held(ids, consumer_id), *_maybe_async(conn, async_commit))
        .values(lease_expires_at=until)
    )
    return conn.execute(stmt).rowcount


def lapsed_leases(conn: Connection, now: datetime, limit: int, *extra: Any) -> Select[Any]:
    """Ids of transport rows whose lease ran out (and match ``extra``), locked
    so that concurrent recoveries skip each other's rows on PostgreSQL."""
    lapsed = (
        select(request.c.id)
        .where(
            request.c.state == tables.RUNNING,
            request.c.lease_expires_at.is_not(None),
            request.c.lease_expires_at < now,
            *extra,
        )
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        lapsed = lapsed.with_for_update(skip_locked=True)
    return lapsed


def transport_recover(conn: Connection, now: datetime, limit: int = 1000) -> list[str]:
    """Put messages whose consumer's lease ran out back to pending.

    Returns the queues of the recovered messages (to wake their consumers).
    Rows claimed by the native worker have no lease and are left alone.
    """
    lapsed = lapsed_leases(conn, now, limit)
    stmt = (
        update(request)
        .where(request.c.id.in_(lapsed.scalar_subquery()))
        .values(
            state=tables.PENDING,
            worker_id=None,
            started_at=None,
            lease_expires_at=None,
            crashes=request.c.crashes + 1,
        )
        .returning(request.c.queue)
    )
    return sorted({row.queue for row in conn.execute(stmt)})


def transport_expire_consumers(conn: Connection, consumer_ids: Sequence[str], now: datetime) -> int:
    """End at once the leases of every message held by ``consumer_ids``
    (consumers known to be dead) and forget their rows; the lease recovery
    that follows (``transport_recover``, after the quarantine check) then
    counts the crash and puts the messages back, as for a lapsed lease."""
    if not consumer_ids:
        return 0
    stmt = update(request).where(
        request.c.worker_id.in_(list(consumer_ids)),
        request.c.state == tables.RUNNING,
        request.c.lease_expires_at.is_not(None),
    )
    ended = conn.execute(stmt.values(lease_expires_at=now - timedelta(seconds=1))).rowcount
    delete_workers(conn, consumer_ids)
    return int(ended)


def transport_delete_expired(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Drop waiting messages past their ``expires``/``expiration`` (e.g. in
    queues nobody consumes any more, such as a dead worker's pidbox)."""
    expired = (
        select(request.c.id)
        .where(
            request.c.state.in_([tables.SCHEDULED, tables.PENDING]),
            request.c.expires_at.is_not(None),
            request.c.expires_at < now,
        )
        .limit(limit)
    )
    return conn.execute(delete(request).where(request.c.id.in_(expired.scalar_subquery()))).rowcount


def transport_queue_size(conn: Connection, queue: str) -> int:
    """Messages waiting in ``queue``: ready and scheduled, not the unacked."""
    stmt = select(func.count()).where(
        request.c.queue == queue, request.c.state.in_([tables.SCHEDULED, tables.PENDING])
    )
    return int(conn.execute(stmt).scalar_one())


def transport_queue_exists(conn: Connection, queue: str) -> bool:
    bound = select(binding.c.id).where(binding.c.queue == queue).limit(1)
    if conn.execute(bound).first() is not None:
        return True
    return conn.execute(select(request.c.id).where(request.c.queue == queue).limit(1)).first() is not None


binding = tables.binding


def transport_bindings(conn: Connection, exchange: str) -> list[Row[Any]]:
    """(exchange_type, routing_key, pattern, queue, message_ttl) of ``exchange``'s bindings."""
    stmt = (
        select(
            binding.c.exchange_type, binding.c.routing_key, binding.c.pattern, binding.c.queue, binding.c.message_ttl
        )
        .where(binding.c.exchange == exchange)
        .order_by(binding.c.id)
    )
    return list(conn.execute(stmt))


def transport_all_bindings(conn: Connection) -> list[Row[Any]]:
    stmt = select(binding.c.queue, binding.c.exchange, binding.c.routing_key).order_by(binding.c.id)
    return list(conn.execute(stmt))


def transport_bind(
    conn: Connection,
    exchange: str,
    exchange_type: str,
    routing_key: str,
    pattern: str,
    queue: str,
    message_ttl: float | None = None,
) -> bool:
    """Bind ``queue`` (True: the binding is new)."""
    from .dialects import insert_binding

    return insert_binding(
        conn,
        {
            "exchange": exchange,
            "exchange_type": exchange_type,
            "routing_key": routing_key,
            "pattern": pattern,
            "queue": queue,
            "message_ttl": message_ttl,
        },
    )


def transport_unbind(conn: Connection, exchange: str, routing_key: str, queue: str) -> int:
    stmt = delete(binding).where(
        binding.c.exchange == exchange, binding.c.routing_key == routing_key, binding.c.queue == queue
    )
    return conn.execute(stmt).rowcount


def transport_unbind_queue(conn: Connection, queue: str) -> int:
    return conn.execute(delete(binding).where(binding.c.queue == queue)).rowcount


def transport_unbind_exchange(conn: Connection, exchange: str) -> int:
    return conn.execute(delete(binding).where(binding.c.exchange == exchange)).rowcount


# -- worker --------------------------------------------------------------------
# SQL of the native worker (jobtable/worker/).  A member claims rows with
# ``claim`` (worker_id = its own id, lease_expires_at NULL), writes their
# results with ``finish``, and gives back what it did not start with
# ``release``.  Rows of a dead member are rescued with ``lose``.


worker_table = tables.worker

#: Worker ids of the native worker start with this, so rescue never touches
#: rows that Kombu consumers hold.
NATIVE_PREFIX = "native:"


@dataclass
class Outcome:
    """How one claimed attempt ended, waiting to be written by ``finish``."""

    row: Row[Any]
    status: str
    ended_at: datetime
    fields: dict[str, Any]
    #: Enqueue the next attempt, due at this time (None: no retry).
    retry_at: datetime | None = None
    #: Added to the retry budget of the next attempt: a DeferJob that does not
    #: count as a retry still needs a new attempt number (one result per attempt).
    extra_retries: int = 0


def next_attempt_values(row: Row[Any], now: datetime, run_at: datetime, extra_retries: int = 0) -> dict[str, Any]:
    """The request row of the attempt after ``row`` (same task id), due at ``run_at``."""
    envelope = json.loads(row.message)
    headers = envelope.setdefault("headers", {})
    headers["retries"] = row.attempt  # Celery's count: attempt - 1 of the next attempt
    headers["eta"] = run_at.isoformat() if run_at > now else None
    headers[messages.RETRIES_HEADER] = row.retries + extra_retries
    return messages.row_values(envelope, row.queue, now)


_RESULT_INSERT: dict[str, Any] = {}


def insert_results(conn: Connection, values: Sequence[dict[str, Any]]) -> None:
    """Insert result rows; one that repeats a (task_id, attempt) is skipped
    rather than failing the batch (Celery clients may reuse task ids)."""
    if not values:
        return
    name = conn.dialect.name
    if name == "postgresql":
        from .dialects import insert_results_pg

        insert_results_pg(conn, values)
        return
    stmt = _RESULT_INSERT.get(name)
    if stmt is None:
        from sqlalchemy.dialects import postgresql as pg_dialect
        from sqlalchemy.dialects import sqlite as sqlite_dialect

        module: Any = pg_dialect if name == "postgresql" else sqlite_dialect
        stmt = _RESULT_INSERT[name] = module.insert(result).on_conflict_do_nothing()
    # executemany needs the same keys in every row: a success has no error
    # fields, a failure no return value.
    keys = set().union(*values)
    conn.execute(stmt, [{key: row.get(key) for key in keys} for row in values])


def write_outcomes(conn: Connection, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Results of attempts already taken off the request table, and the
    retries they ask for, linked both ways (same task id, ``retried``)."""
    retry_rows = {
        o.row.id: next_attempt_values(o.row, now, o.retry_at, o.extra_retries)
        for o in outcomes
        if o.retry_at is not None
    }
    requeued: set[str] = set(insert_requests(conn, list(retry_rows.values()))) if retry_rows else set()
    insert_results(
        conn,
        [
            result_values(
                o.row,
                o.status,
                ended_at=o.ended_at,
                retried=o.row.id in retry_rows and o.row.task_id in requeued,
                **o.fields,
            )
            for o in outcomes
        ],
    )


def finish(conn: Connection, worker_id: str, outcomes: Sequence[Outcome], now: datetime) -> list[Outcome]:
    """Write the outcomes of attempts that are still this worker's.

    The guard: the request row is deleted only if it is still running under
    ``worker_id``.  A job that rescue already declared LOST (its row taken
    away) therefore cannot write a second result.  Returns the outcomes written.
    """
    if not outcomes:
        return []
    if conn.dialect.name == "postgresql":
        from .dialects import finish_pg

        kept = finish_pg(conn, worker_id, outcomes)
        mine = [o for o in outcomes if o.row.id in kept]
        _enqueue_retries(conn, [o for o in mine if o.retry_at is not None], now)
        return mine
    kept = dialect_of(conn).take_running(conn, worker_id, [o.row.id for o in outcomes])
    mine = [o for o in outcomes if o.row.id in kept]
    if mine:
        write_outcomes(conn, mine, now)
    return mine


def _enqueue_retries(conn: Connection, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Next attempts of results already written with ``retried`` true; a
    retry that could not be enqueued (its concurrency key taken) unmarks it."""
    if not outcomes:
        return
    rows = [next_attempt_values(o.row, now, o.retry_at, o.extra_retries) for o in outcomes]  # type: ignore[arg-type]
    inserted = insert_requests(conn, rows)
    for o in outcomes:
        if o.row.task_id not in inserted:
            conn.execute(
                update(result)
                .where(result.c.task_id == o.row.task_id, result.c.attempt == o.row.attempt)
                .values(retried=False)
            )


def release(
    conn: Connection, worker_id: str, ids: Sequence[int] | None = None, *, keep: Sequence[int] = ()
) -> int:
    """Give claimed-but-unstarted jobs back: pending again, for anyone.

    ``ids``: those rows (None: every row ``worker_id`` runs), minus ``keep``.
    """
    stmt = update(request).where(request.c.worker_id == worker_id, request.c.state == tables.RUNNING)
    if ids is not None:
        if not ids:
            return 0
        stmt = stmt.where(request.c.id.in_(list(ids)))
    if keep:
        stmt = stmt.where(request.c.id.not_in(list(keep)))
    stmt = stmt.values(state=tables.PENDING, worker_id=None, started_at=None, lease_expires_at=None).returning(
        request.c.queue
    )
    queues = [row.queue for row in conn.execute(stmt)]
    if queues:
        from .dialects import wake_queues

        wake_queues(conn, sorted(set(queues)))
    return len(queues)


#: ``error_type`` of LOST attempts: the process died while the job ran (or,
#: when nobody could tell, may have run).  These count towards quarantine.
WORKER_LOST = "WorkerLost"
#: The job had finished; its process died before the result was written.
RESULT_LOST = "ResultLost"
#: The worker was stopped (shutdown grace over, a second signal) mid-job.
WORKER_STOPPED = "WorkerStopped"


def lose(
    conn: Connection,
    worker_id: str,
    ids: Sequence[int] | None,
    now: datetime,
    *,
    message: str,
    retry_delay: Any = None,
    error_type: str = WORKER_LOST,
    retry: bool = True,
    quarantine_after: int = 0,
    quarantine_message: Callable[[Row[Any], int], str] | None = None,
) -> list[Row[Any]]:
    """Record running jobs of ``worker_id`` (those ``ids``, or all) LOST, and
    retry those with retries left after ``retry_delay(row)`` seconds
    (``retry`` False: never).

    ``quarantine_after`` > 0: an attempt that makes its task's WorkerLost
    attempts reach that many is recorded QUARANTINED instead (message from
    ``quarantine_message(row, times)``) and not retried.  Only rows still
    running under ``worker_id`` are touched, so rows already finished are safe.
    """
    stmt = delete(request).where(request.c.worker_id == worker_id, request.c.state == tables.RUNNING)
    if ids is not None:
        if not ids:
            return []
        stmt = stmt.where(request.c.id.in_(list(ids)))
    rows = list(conn.execute(stmt.returning(*request.c)))
    earlier: dict[str, int] = {}
    if rows and quarantine_after > 0 and error_type == WORKER_LOST:
        earlier = worker_lost_counts(conn, [row.task_id for row in rows])
    outcomes = []
    for row in rows:
        times = earlier.get(row.task_id, 0) + 1
        if quarantine_after > 0 and error_type == WORKER_LOST and times >= quarantine_after:
            text = quarantine_message(row, times) if quarantine_message is not None else message
            outcomes.append(
                Outcome(row, tables.QUARANTINED, now, {"error_type": error_type, "error_message": text})
            )
            continue
        retry_at = None
        if retry and row.attempt <= row.retries:
            delay = retry_delay(row) if retry_delay is not None else 0
            retry_at = now + timedelta(seconds=max(0.0, float(delay)))
        outcomes.append(Outcome(row, tables.LOST, now, {"error_type": error_type, "error_message": message}, retry_at))
    if outcomes:
        write_outcomes(conn, outcomes, now)
    return rows


def worker_lost_counts(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """How many recorded attempts of each task ended with its process dying
    (LOST or QUARANTINED with error_type WorkerLost)."""
    stmt = (
        select(result.c.task_id, func.count())
        .where(
            result.c.task_id.in_(sorted(set(task_ids))),
            result.c.status.in_([tables.LOST, tables.QUARANTINED]),
            result.c.error_type == WORKER_LOST,
        )
        .group_by(result.c.task_id)
    )
    return {task_id: int(n) for task_id, n in conn.execute(stmt)}


def workers_referenced(conn: Connection, worker_ids: Sequence[str]) -> set[str]:
    """Those of ``worker_ids`` that still have a heartbeat row or running jobs
    (not rescued yet)."""
    if not worker_ids:
        return set()
    ids = list(worker_ids)
    found = set(conn.execute(select(worker_table.c.id).where(worker_table.c.id.in_(ids))).scalars())
    stmt = (
        select(request.c.worker_id)
        .where(request.c.worker_id.in_(ids), request.c.state == tables.RUNNING)
        .distinct()
    )
    return found | set(conn.execute(stmt).scalars())


def register_worker(
    conn: Connection,
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    queues: Sequence[str],
    processes: int,
    now: datetime,
    kind: str = "native",
) -> None:
    """Insert (or refresh) a worker's heartbeat row (``kind`` "kombu": a
    Kombu/Celery consumer of the transport, whose queues may change)."""
    values = {
        "id": worker_id,
        "kind": kind,
        "hostname": hostname,
        "pid": pid,
        "queues": json.dumps(list(queues)),
        "processes": processes,
        "started_at": now,
        "heartbeat_at": now,
    }
    from sqlalchemy.dialects import postgresql as pg_dialect
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    module: Any = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
    stmt = module.insert(worker_table).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[worker_table.c.id], set_={"heartbeat_at": now, "pid": pid, "queues": values["queues"]}
    )
    conn.execute(stmt)


def delete_stale_consumers(conn: Connection, before: datetime) -> int:
    """Forget Kombu consumers silent since ``before`` (killed ones: their
    messages came back through the leases long ago)."""
    stmt = delete(worker_table).where(worker_table.c.kind == "kombu", worker_table.c.heartbeat_at < before)
    return conn.execute(stmt).rowcount


def heartbeat(conn: Connection, worker_ids: Sequence[str], now: datetime) -> set[str]:
    """Refresh heartbeats; returns the ids that had no row (rescued meanwhile)."""
    if not worker_ids:
        return set()
    stmt = (
        update(worker_table)
        .where(worker_table.c.id.in_(list(worker_ids)))
        .values(heartbeat_at=now)
        .returning(worker_table.c.id)
    )
    found = {row.id for row in conn.execute(stmt)}
    return set(worker_ids) - found


def delete_workers(conn: Connection, worker_ids: Sequence[str]) -> None:
    if worker_ids:
        conn.execute(delete(worker_table).where(worker_table.c.id.in_(list(worker_ids))))


def dead_workers(conn: Connection, before: datetime, limit: int = 20) -> list[str]:
    """Native workers whose last heartbeat is older than ``before``, locked
    (SKIP LOCKED) so that two rescuers never take the same one."""
    stmt = (
        select(worker_table.c.id)
        .where(worker_table.c.kind == "native", worker_table.c.heartbeat_at < before)
        .order_by(worker_table.c.heartbeat_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(conn.execute(stmt).scalars())


def native_workers(conn: Connection, kind: str = "native") -> list[Row[Any]]:
    """Every worker row of ``kind`` (id, hostname, pid, started_at): the
    candidates of fast death detection (``worker/liveness.py``,
    ``transport/liveness.py``)."""
    stmt = select(worker_table.c.id, worker_table.c.hostname, worker_table.c.pid, worker_table.c.started_at).where(
        worker_table.c.kind == kind
    )
    return list(conn.execute(stmt))


def lock_workers(conn: Connection, worker_ids: Sequence[str]) -> list[str]:
    """Lock the rows of ``worker_ids`` that still exist (SKIP LOCKED on
    PostgreSQL), so that two rescuers never take the same worker."""
    if not worker_ids:
        return []
    stmt = select(worker_table.c.id).where(worker_table.c.id.in_(list(worker_ids)))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(conn.execute(stmt).scalars())


def orphan_workers(conn: Connection, before: datetime, limit: int = 20) -> list[str]:
    """Native worker ids that run jobs (started before ``before``) but have no
    heartbeat row at all, e.g. rows left by a worker rescued while it claimed."""
    has_row = select(worker_table.c.id).where(worker_table.c.id == request.c.worker_id).exists()
    stmt = (
        select(request.c.worker_id)
        .where(
            request.c.state == tables.RUNNING,
            request.c.worker_id.like(NATIVE_PREFIX + "%"),
            request.c.lease_expires_at.is_(None),
            request.c.started_at < before,
            ~has_row,
        )
        .distinct()
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def queue_depth(conn: Connection, queues: Sequence[str]) -> dict[str, int]:
    """Requests of ``queues`` by state."""
    stmt = (
        select(request.c.state, func.count())
        .where(request.c.queue.in_(list(queues)))
        .group_by(request.c.state)
    )
    counts = {tables.SCHEDULED: 0, tables.PENDING: 0, tables.RUNNING: 0}
    for state, n in conn.execute(stmt):
        counts[state] = int(n)
    return counts


# -- schedules -------------------------------------------------------------------
# The scheduler's ledger: one row per schedule entry holding the last slot
# enqueued (or skipped).  See jobtable/scheduler.py.

schedule = tables.schedule


def schedule_claim(conn: Connection, name: str, slot: datetime, now: datetime) -> bool:
    """Move the entry's ledger to ``slot`` unless it is there or past it.

    True for exactly one caller per (name, slot) across processes: competing
    upserts of one row are serialised (row lock on PostgreSQL, write lock on
    SQLite) and the loser's WHERE sees the winner's slot.  A missing row is
    created, so an entry whose row was pruned meanwhile still fires.
    """
    from sqlalchemy import or_

    from .dialects import upsert_insert

    stmt = upsert_insert(conn, schedule).values(name=name, last_slot=slot, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[schedule.c.name],
        set_={"last_slot": stmt.excluded.last_slot, "updated_at": stmt.excluded.updated_at},
        where=or_(schedule.c.last_slot.is_(None), schedule.c.last_slot < stmt.excluded.last_slot),
    ).returning(schedule.c.name)
    return conn.execute(stmt).first() is not None


def schedule_seed(conn: Connection, slots: dict[str, datetime | None], now: datetime) -> None:
    """Create ledger rows of new entries at ``slots`` (None: no slot yet;
    existing rows are kept)."""
    if not slots:
        return
    from .dialects import upsert_insert

    rows = [{"name": name, "last_slot": slot, "updated_at": now} for name, slot in slots.items()]
    conn.execute(upsert_insert(conn, schedule).values(rows).on_conflict_do_nothing())


def schedule_rows(conn: Connection) -> dict[str, Row[Any]]:
    """Every ledger row by entry name."""
    return {row.name: row for row in conn.execute(select(schedule))}


def schedule_prune(conn: Connection, keep: Sequence[str]) -> list[str]:
    """Delete ledger rows of entries not in ``keep``; returns their names."""
    stmt = delete(schedule)
    if keep:
        stmt = stmt.where(schedule.c.name.not_in(list(keep)))
    return sorted(row.name for row in conn.execute(stmt.returning(schedule.c.name)))
