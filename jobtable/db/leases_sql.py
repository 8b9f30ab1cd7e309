"""SQL of lapsed transport leases: found (and locked), put back to pending
with the crash counted, and ended at once for consumers known to be dead.
``deadletters.quarantine_lapsed`` uses the same finder, before recovery."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from . import dialects, tables, workers_sql

request = tables.request


def lapsed_leases(conn: Connection, now: datetime, limit: int, *extra: Any) -> Select[Any]:
    """Ids of transport rows whose lease ran out (and match ``extra``), locked
    so that concurrent recoveries skip each other's rows (where rows lock)."""
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
    return dialects.dialect_of(conn).skip_locked(lapsed)


def transport_recover(conn: Connection, now: datetime, limit: int = 1000) -> list[str]:
    """Put messages whose consumer's lease ran out back to pending.

    Returns the queues of the recovered messages (to wake their consumers).
    Rows claimed by the native worker have no lease and are left alone.
    """
    dialect = dialects.dialect_of(conn)
    lapsed = dialect.in_limited(conn, request.c.id, lapsed_leases(conn, now, limit))
    values = {
        "state": tables.PENDING,
        "worker_id": None,
        "started_at": None,
        "lease_expires_at": None,
        "crashes": request.c.crashes + 1,
    }
    rows = dialect.update_returning(conn, request, [lapsed], values, [request.c.queue])
    return sorted({row.queue for row in rows})


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
    workers_sql.delete_workers(conn, consumer_ids)
    return int(ended)


def lapsed_holders(conn: Connection, now: datetime, limit: int = 1000) -> list[str]:
    """Consumers holding messages whose lease ran out."""
    stmt = (
        select(request.c.worker_id)
        .where(
            request.c.state == tables.RUNNING,
            request.c.lease_expires_at.is_not(None),
            request.c.lease_expires_at < now,
            request.c.worker_id.is_not(None),
        )
        .distinct()
        .limit(limit)
    )
    return [str(row.worker_id) for row in conn.execute(stmt)]


def release_unstarted(conn: Connection, now: datetime, holder: str, started: set[str]) -> list[str]:
    """Put ``holder``'s lapsed Celery task messages (a ``task`` header) that
    its ledger does not list as ``started`` back to pending without counting
    a crash: the consumer only prefetched them.  Returns their queues (one
    entry per message)."""
    lapsed = lapsed_leases(conn, now, 1000, request.c.worker_id == holder, request.c.task_name != "")
    held = conn.execute(
        select(request.c.id, request.c.task_id).where(request.c.id.in_(lapsed.scalar_subquery()))
    ).all()
    ids = [row.id for row in held if row.task_id not in started]
    if not ids:
        return []
    stmt = (
        update(request)
        .where(
            request.c.id.in_(ids),
            # Still this holder's and lapsed: a concurrent recovery may
            # have taken some already.
            request.c.worker_id == holder,
            request.c.state == tables.RUNNING,
            request.c.lease_expires_at < now,
        )
        .values(state=tables.PENDING, worker_id=None, started_at=None, lease_expires_at=None)
        .returning(request.c.queue)
    )
    return [row.queue for row in conn.execute(stmt)]
