"""SQL of claiming, shared by the native worker and Kombu consumers: due
scheduled rows turned pending, the next due time, and the claim itself
(each dialect's claim is in ``dialects.py``; the transport's own claim,
which counts deliveries, is ``transport_sql.transport_claim``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Row

from . import dialects, revokes_sql, tables
from .dialects import dialect_of

request = tables.request


def promote_due(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Turn scheduled jobs whose time has come into pending ones (locked,
    SKIP LOCKED where rows lock: two promoters share the work)."""
    dialect = dialect_of(conn)
    due = (
        select(request.c.id)
        .where(request.c.state == tables.SCHEDULED, request.c.run_at <= now)
        .order_by(request.c.run_at)
        .limit(limit)
    )
    batch = dialect.in_limited(conn, request.c.id, dialect.skip_locked(due))
    rows = dialect.update_returning(conn, request, [batch], {"state": tables.PENDING}, [request.c.queue])
    queues = [row.queue for row in rows]
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
    rows = dialect_of(conn).claim(
        conn,
        queues,
        limit,
        {"worker_id": worker_id, "started_at": now, "lease_expires_at": lease_expires_at},
    )
    return drop_revoked(conn, rows, worker_id, now)


def drop_revoked(conn: Connection, rows: list[Row[Any]], worker_id: str, now: datetime) -> list[Row[Any]]:
    """The claimed ``rows`` minus the revoked ones, which end REVOKED here
    (db/revokes_sql.py): a worker never receives a revoked task, whenever
    it was revoked and whether or not it heard the broadcast."""
    hits = revokes_sql.revoked(conn, rows, now)
    if not hits:
        return rows
    handed = {row.id for row in rows if row.id in hits and revokes_sql.runner_records_revoke(row)}
    revokes_sql.flagged.update(row.task_id for row in rows if row.id in handed)
    revokes_sql.end_revoked(conn, [row for row in rows if row.id in hits and row.id not in handed], worker_id, now)
    return [row for row in rows if row.id not in hits or row.id in handed]


def higher_pending(conn: Connection, queues: Sequence[str], priority: int) -> bool:
    """Whether a pending job of ``queues`` outranks ``priority``: one probe
    of the claim index (ix_jobtable_request_claim), no lock.  A member asks
    it between the jobs of a claimed batch (worker/preempt.py)."""
    stmt = (
        select(request.c.id)
        .where(request.c.state == tables.PENDING, request.c.queue.in_(list(queues)), request.c.priority > priority)
        .limit(1)
    )
    return conn.execute(stmt).first() is not None
