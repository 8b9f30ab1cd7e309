"""SQL of ``jobtable_worker``: heartbeat rows of native workers and Kombu
consumers (registered, refreshed, forgotten), the candidates of fast death
detection, and the row locks that keep two rescuers off the same worker."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, literal, select
from sqlalchemy.engine import Connection, Row

from . import tables
from .dialects import dialect_of

request = tables.request
worker_table = tables.worker


#: Worker ids of the native worker start with this, so rescue never touches
#: rows that Kombu consumers hold.
NATIVE_PREFIX = "native:"


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
    from .dialects import upsert_insert

    stmt = upsert_insert(conn, worker_table).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[worker_table.c.id], set_={"heartbeat_at": now, "pid": pid, "queues": values["queues"]}
    )
    conn.execute(stmt)


def heartbeat(
    conn: Connection, worker_ids: Sequence[str], now: datetime, running: Mapping[str, int] | None = None
) -> set[str]:
    """Refresh heartbeats; returns the ids that had no row (rescued meanwhile).

    ``running``: each member's request running right now (absent or 0:
    none), written in the same statement as ``running_id`` -- what makes a
    claimed request "running" for the reads (``reads_sql.started``)."""
    if not worker_ids:
        return set()
    values: dict[str, Any] = {"heartbeat_at": now}
    if running is not None:
        busy = {worker_id: row_id for worker_id, row_id in running.items() if row_id}
        values["running_id"] = (
            case(
                *((worker_table.c.id == worker_id, literal(row_id)) for worker_id, row_id in busy.items()),
                else_=None,
            )
            if busy
            else None
        )
    where = [worker_table.c.id.in_(list(worker_ids))]
    rows = dialect_of(conn).update_returning(conn, worker_table, where, values, [worker_table.c.id])
    found = {row.id for row in rows}
    return set(worker_ids) - found


def delete_workers(conn: Connection, worker_ids: Sequence[str]) -> None:
    if worker_ids:
        conn.execute(delete(worker_table).where(worker_table.c.id.in_(list(worker_ids))))


def delete_stale_consumers(conn: Connection, before: datetime) -> int:
    """Forget Kombu consumers silent since ``before`` (killed ones: their
    messages came back through the leases long ago)."""
    stmt = delete(worker_table).where(worker_table.c.kind == "kombu", worker_table.c.heartbeat_at < before)
    return conn.execute(stmt).rowcount


def native_workers(conn: Connection, kind: str = "native") -> list[Row[Any]]:
    """Every worker row of ``kind`` (id, hostname, pid, started_at): the
    candidates of fast death detection (``worker/liveness.py``,
    ``transport/liveness.py``)."""
    stmt = select(worker_table.c.id, worker_table.c.hostname, worker_table.c.pid, worker_table.c.started_at).where(
        worker_table.c.kind == kind
    )
    return list(conn.execute(stmt))


def lock_workers(conn: Connection, worker_ids: Sequence[str]) -> list[str]:
    """Lock the rows of ``worker_ids`` that still exist (SKIP LOCKED where
    rows lock), so that two rescuers never take the same worker."""
    if not worker_ids:
        return []
    stmt = select(worker_table.c.id).where(worker_table.c.id.in_(list(worker_ids)))
    return list(conn.execute(dialect_of(conn).skip_locked(stmt)).scalars())


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
