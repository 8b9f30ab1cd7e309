"""SQL of the Kombu transport (jobtable/transport/): a consumer's claim and
what it does with the rows it holds (ack, requeue, lease renewal), the sweep
of expired messages, queue size and existence.

Rows a Kombu consumer claims carry ``lease_expires_at``: a consumer that
dies stops renewing it and any other consumer puts its rows back to pending
once it has passed (``leases_sql.py``).  Bindings: ``bindings_sql.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection, Row

from . import dialects, tables
from .dialects import dialect_of

request = tables.request
binding = tables.binding


def transport_claim(
    conn: Connection,
    queues: Sequence[str],
    limit: int,
    *,
    consumer_id: str,
    lease_expires_at: datetime,
    async_commit: bool = False,
) -> list[Row[Any]]:
    """Claim up to ``limit`` pending messages of ``queues`` for a consumer,
    counting the delivery (``deliveries > 1`` means redelivered).

    ``started_at`` stays NULL: a delivered message may only be prefetched
    (Celery holds several per process); it is set when the consumer reports
    that the task really started (``transport_mark_started``)."""
    if conn.dialect.name == "postgresql":
        return dialects.transport_claim_pg(
            conn,
            queues,
            limit,
            consumer_id=consumer_id,
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
            "started_at": None,
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
    where = [*_held(ids, consumer_id), *_maybe_async(conn, async_commit)]
    values = {"state": tables.PENDING, "worker_id": None, "started_at": None, "lease_expires_at": None}
    rows = dialect_of(conn).update_returning(conn, request, where, values, [request.c.queue])
    return sorted({row.queue for row in rows})


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


def transport_mark_started(
    conn: Connection, ids: Sequence[int], consumer_id: str, now: datetime, async_commit: bool = False
) -> int:
    """Held messages whose task really started (a Celery worker's
    ``task_prerun``, batched by the lease thread): ``started_at`` set once,
    which makes them "running" rather than "claimed" (reads_sql.started)."""
    stmt = (
        update(request)
        .where(*_held(ids, consumer_id), request.c.started_at.is_(None), *_maybe_async(conn, async_commit))
        .values(started_at=now)
    )
    return conn.execute(stmt).rowcount


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
    return conn.execute(delete(request).where(dialect_of(conn).in_limited(conn, request.c.id, expired))).rowcount


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
