"""SQL of the native worker's claimed rows ending (jobtable/worker/).

A member claims rows with ``claims_sql.claim`` (worker_id = its own id,
lease_expires_at NULL), writes their results with ``finish``, and gives
back what it did not start with ``release``.  Rows of a dead member are
rescued with ``rescue_sql.lose``, which writes through ``write_outcomes``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection, Row

from .. import messages
from . import enqueue_sql, result_rows, tables
from .dialects import dialect_of

request = tables.request
result = tables.result


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


def write_outcomes(conn: Connection, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Results of attempts already taken off the request table, and the
    retries they ask for, linked both ways (same task id, ``retried``)."""
    retry_rows = {
        o.row.id: next_attempt_values(o.row, now, o.retry_at, o.extra_retries)
        for o in outcomes
        if o.retry_at is not None
    }
    requeued: set[str] = set(enqueue_sql.insert_requests(conn, list(retry_rows.values()))) if retry_rows else set()
    result_rows.insert_results(
        conn,
        [
            result_rows.result_values(
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
    inserted = enqueue_sql.insert_requests(conn, rows)
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
    where = [request.c.worker_id == worker_id, request.c.state == tables.RUNNING]
    if ids is not None:
        if not ids:
            return 0
        where.append(request.c.id.in_(list(ids)))
    if keep:
        where.append(request.c.id.not_in(list(keep)))
    values = {"state": tables.PENDING, "worker_id": None, "started_at": None, "lease_expires_at": None}
    queues = [row.queue for row in dialect_of(conn).update_returning(conn, request, where, values, [request.c.queue])]
    if queues:
        from .dialects import wake_queues

        wake_queues(conn, sorted(set(queues)))
    return len(queues)
