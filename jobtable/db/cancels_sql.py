"""SQL of cancelling a running job: a stored mark the native worker reads.

``request.cancel()`` of a running job, the dashboard's Cancel of a running
row, the shim's ``AsyncResult.revoke(terminate=True)`` and Celery's
``app.control.revoke(id, terminate=True)`` (read from the broadcast at
publish, transport/revoke_broadcasts.py) record a ``terminate`` row in
``jobtable_revoke``: ``value`` the task id, ``name`` the attempt to stop
('' for whichever attempt runs: Celery's revoke names no attempt).  A mark
naming its attempt never stops a later one -- a job retried by hand after
its cancel runs.  The marks expire as revokes do (db/revokes_sql.py).

The supervisor of every native worker reads, while one of its members runs
a job, which of those running rows have a mark (:func:`asked`, one indexed
join of at most a pool's worth of rows) and stops them (worker/cancels.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection

from . import revokes_sql, tables

request = tables.request
revoke = tables.revoke

#: How a cancellation is recorded: the Job API's and dashboard's cancel, and
#: Celery's revoke(terminate=True) (TaskRevokedError, as a Celery worker).
CANCELLED_ERROR = "jobtable.JobCancelled"
REVOKED_ERROR = revokes_sql.REVOKED_ERROR


def ask(conn: Connection, task_id: str, now: datetime, attempt: int | None = None, *, revoke_task: bool = False) -> int:
    """Record that the running attempt ``attempt`` of ``task_id`` (None:
    whichever runs) is to be stopped.  ``revoke_task``: Celery's terminate,
    which also revokes the id (no later attempt runs; its result says
    REVOKED).  Returns how many marks were recorded (0: an id no message can
    hold)."""
    entries = [(tables.REVOKE_TERMINATE, "" if attempt is None else str(attempt), task_id)]
    if revoke_task:
        entries.append((tables.REVOKE_TASK, "", task_id))
    return revokes_sql.add(conn, entries, now)


def asked(conn: Connection, row_ids: Sequence[int], now: datetime) -> dict[int, str]:
    """Which of the running ``row_ids`` are marked to be stopped: row id ->
    the error type their result is recorded with.  No statement for none."""
    if not row_ids:
        return {}
    joined = request.join(
        revoke, and_(revoke.c.value == request.c.task_id, revoke.c.kind == tables.REVOKE_TERMINATE)
    )
    stmt = (
        select(request.c.id, request.c.task_id, request.c.attempt, revoke.c.name, revoke.c.expires_at)
        .select_from(joined)
        .where(request.c.id.in_(sorted(set(row_ids))), request.c.state == tables.RUNNING)
    )
    hits: dict[int, str] = {}
    rows = list(conn.execute(stmt))
    if not rows:
        return hits
    revoked = _revoked_ids(conn, sorted({row.task_id for row in rows}))
    for row in rows:
        if _aware(row.expires_at) <= now or (row.name and row.name != str(row.attempt)):
            continue
        hits[row.id] = REVOKED_ERROR if row.task_id in revoked else CANCELLED_ERROR
    return hits


def _revoked_ids(conn: Connection, task_ids: list[str]) -> set[str]:
    """Those of ``task_ids`` that are revoked too (Celery's terminate)."""
    if not task_ids:
        return set()
    stmt = select(revoke.c.value).where(
        revoke.c.value.in_(task_ids), revoke.c.kind == tables.REVOKE_TASK, revoke.c.name == ""
    )
    return set(conn.execute(stmt).scalars())


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def running_row(conn: Connection, task_id: str) -> Any:
    """The running request of ``task_id`` (its worker id and attempt), or None."""
    stmt = select(request.c.id, request.c.task_id, request.c.attempt, request.c.worker_id, request.c.task_name).where(
        request.c.task_id == task_id, request.c.state == tables.RUNNING
    )
    return conn.execute(stmt.limit(1)).first()
