"""SQL of poison handling: dead letters (undecodable rows) and quarantined
transport messages, moved out of ``jobtable_request`` into results.

Bad rows are rare, so these statements favour being sure over being fast:
each moved row gets exactly one result row, even when its task id already
has a result for the same attempt (a hand-made row, a reused Celery id).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Row

from . import dialects, leases_sql, result_rows, tables

request = tables.request
result = tables.result


def _free_attempt(conn: Connection, row: Row[Any]) -> int:
    """``row.attempt``, or the next attempt number free for its task id."""
    taken = conn.execute(
        select(func.max(result.c.attempt)).where(result.c.task_id == row.task_id)
    ).scalar()
    if taken is None or taken < row.attempt:
        return int(row.attempt)
    exists = conn.execute(
        select(result.c.id).where(result.c.task_id == row.task_id, result.c.attempt == row.attempt).limit(1)
    ).first()
    return int(row.attempt) if exists is None else int(taken) + 1


def move_to_results(conn: Connection, rows: Sequence[Row[Any]], entries: dict[int, tuple[str, dict[str, Any]]], now: datetime) -> None:
    """Insert one result per removed request row (``entries``: id -> (status, fields))."""
    values = []
    for row in rows:
        status, fields = entries[row.id]
        values.append(
            result_rows.result_values(row, status, ended_at=now, attempt=_free_attempt(conn, row), retried=False, **fields)
        )
    for value in values:  # one by one: two rows of one task id need two attempts
        result_rows.insert_results(conn, [value])


def bury(
    conn: Connection, holder: str, entries: Sequence[tuple[int, str, dict[str, Any]]], now: datetime
) -> set[int]:
    """Delete the rows of ``entries`` ((id, status, result fields)) still
    running under ``holder`` and record each as a result; returns the ids moved."""
    if not entries:
        return set()
    by_id = {rid: (status, fields) for rid, status, fields in entries}
    held = [request.c.id.in_(list(by_id)), request.c.worker_id == holder, request.c.state == tables.RUNNING]
    rows = dialects.dialect_of(conn).delete_returning(conn, request, held, list(request.c))
    move_to_results(conn, rows, by_id, now)
    return {row.id for row in rows}


def quarantine_lapsed(conn: Connection, now: datetime, after: int, message: str, limit: int = 1000) -> list[Row[Any]]:
    """Lapsed transport leases of messages already recovered ``after - 1``
    times: their consumer died holding them once more, so they become
    QUARANTINED results instead of being delivered again."""
    lapsed = leases_sql.lapsed_leases(conn, now, limit, request.c.crashes >= after - 1)
    dialect = dialects.dialect_of(conn)
    rows = dialect.delete_returning(conn, request, [dialect.in_limited(conn, request.c.id, lapsed)], list(request.c))
    fields = {
        "error_type": "Quarantined",
        "error_message": message,
    }
    move_to_results(conn, rows, {row.id: (tables.QUARANTINED, fields) for row in rows}, now)
    return rows

