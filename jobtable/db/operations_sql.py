"""SQL of operating the queue: cancel a job that has not started, retry a
finished one, purge waiting jobs, clear old results (the CLI, the
dashboard's actions, ``AsyncResult.revoke``, Kombu's purge, retention)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Row

from .. import messages
from . import clock, dialects, enqueue_sql, result_rows, tables

request = tables.request
result = tables.result


def cancel_pending(conn: Connection, task_id: str, now: datetime) -> Row[Any] | None:
    """Remove a job that has not started and record it CANCELLED.

    Returns the removed request, or None when no pending or scheduled job
    has that id (it may be running or finished).
    """
    waiting = [request.c.task_id == task_id, request.c.state.in_([tables.SCHEDULED, tables.PENDING])]
    rows = dialects.dialect_of(conn).delete_returning(conn, request, waiting, list(request.c))
    removed = rows[0] if rows else None
    if removed is not None:
        conn.execute(insert(result).values(result_rows.result_values(removed, tables.CANCELLED, ended_at=now)))
    return removed


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
    inserted = enqueue_sql.insert_requests(conn, [row])
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
    deleted = conn.execute(delete(result).where(dialects.dialect_of(conn).in_limited(conn, result.c.id, ids))).rowcount
    dialects.compact_result_stats(conn, clock.utcnow())
    return deleted


def lock_result(conn: Connection, result_id: int) -> Row[Any] | None:
    """Read a result row and hold it until the transaction ends, so that two
    retries of one attempt run one after the other and the second sees the
    first's request (``FOR UPDATE`` on PostgreSQL; SQLite's write lock,
    taken at BEGIN IMMEDIATE, already serialises them)."""
    return conn.execute(select(result).where(result.c.id == result_id).with_for_update()).first()
