"""The dashboard's revoke and un-revoke (db/revokes_sql.py): a revoke
recorded here holds for every worker, native or Celery, now or started
later; un-revoking lets a task id that has not run yet run again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.engine import Connection

from ..db import operations_sql, revokes_sql, tables
from .queries import ActionReport, request_by_id


def revoke_requests(conn: Connection, request_ids: Sequence[int], now: datetime) -> ActionReport:
    """Revoke the tasks of these requests: a waiting one ends REVOKED now;
    a running attempt finishes, and no later attempt of its id runs."""
    report = ActionReport()
    for rid in request_ids:
        row = request_by_id(conn, rid)
        if row is None:
            report.skipped.append(f"job {rid}: gone")
            continue
        revokes_sql.add(conn, [(revokes_sql.TASK, "", row.task_id)], now)
        if row.state == tables.RUNNING:
            report.skipped.append(f"{row.task_name} {row.task_id}: running; revoked for its next attempts")
            continue
        operations_sql.cancel_pending(conn, row.task_id, now)
        report.done.append(f"{row.task_name} {row.task_id}")
    return report


def unrevoke_tasks(conn: Connection, task_ids: Sequence[str]) -> ActionReport:
    report = ActionReport()
    for task_id in task_ids:
        removed = revokes_sql.remove(conn, revokes_sql.TASK, str(task_id))
        (report.done if removed else report.skipped).append(task_id if removed else f"{task_id}: not revoked")
    return report


def is_revoked(conn: Connection, task_id: str, now: datetime) -> bool:
    return revokes_sql.is_revoked(conn, task_id, now)
