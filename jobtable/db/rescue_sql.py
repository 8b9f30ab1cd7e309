"""SQL of rescuing a dead native worker's rows (worker/rescue.py): running
rows recorded LOST (and retried) or QUARANTINED, the WorkerLost count that
decides quarantine, and the dead or orphaned worker ids to rescue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Row

from . import finish_sql, tables
from .dialects import dialect_of
from .workers_sql import NATIVE_PREFIX

request = tables.request
result = tables.result
worker_table = tables.worker


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
    requeue_once: Callable[[Row[Any]], bool] | None = None,
) -> list[Row[Any]]:
    """Record running jobs of ``worker_id`` (those ``ids``, or all) LOST, and
    retry those with retries left after ``retry_delay(row)`` seconds
    (``retry`` False: never).

    ``quarantine_after`` > 0: an attempt that makes its task's WorkerLost
    attempts reach that many is recorded QUARANTINED instead (message from
    ``quarantine_message(row, times)``) and not retried.  Only rows still
    running under ``worker_id`` are touched, so rows already finished are safe.

    ``requeue_once``: a row it says yes to (Celery's ``acks_late`` with
    ``reject_on_worker_lost``) whose task never lost its process before is
    run again at once, its retry budget untouched, as Celery requeues such a
    message once (a redelivered one that dies again fails WorkerLostError).
    """
    where = [request.c.worker_id == worker_id, request.c.state == tables.RUNNING]
    if ids is not None:
        if not ids:
            return []
        where.append(request.c.id.in_(list(ids)))
    rows = dialect_of(conn).delete_returning(conn, request, where, list(request.c))
    lose_rows(
        conn, rows, now, message=message, retry_delay=retry_delay, error_type=error_type, retry=retry,
        quarantine_after=quarantine_after, quarantine_message=quarantine_message, requeue_once=requeue_once,
    )
    return rows


def lose_rows(
    conn: Connection,
    rows: Sequence[Any],
    now: datetime,
    *,
    message: str,
    retry_delay: Any = None,
    error_type: str = WORKER_LOST,
    retry: bool = True,
    quarantine_after: int = 0,
    quarantine_message: Callable[[Any, int], str] | None = None,
    requeue_once: Callable[[Any], bool] | None = None,
) -> None:
    """``lose`` of attempts already taken off the request table -- or never
    in it: a routed queue's (routing/lost.py), whose ``rows`` are made from
    the messages its dead member's ledger kept.  The one place that
    decides LOST, retry or QUARANTINED."""
    requeued: set[int] = set()
    if retry and requeue_once is not None and error_type == WORKER_LOST:
        requeued = {row.id for row in rows if requeue_once(row)}
    earlier: dict[str, int] = {}
    if rows and error_type == WORKER_LOST and (quarantine_after > 0 or requeued):
        earlier = worker_lost_counts(conn, [row.task_id for row in rows])
    outcomes = []
    for row in rows:
        times = earlier.get(row.task_id, 0) + 1
        if quarantine_after > 0 and error_type == WORKER_LOST and times >= quarantine_after:
            text = quarantine_message(row, times) if quarantine_message is not None else message
            outcomes.append(
                finish_sql.Outcome(row, tables.QUARANTINED, now, {"error_type": error_type, "error_message": text})
            )
            continue
        fields = {"error_type": error_type, "error_message": message}
        if row.id in requeued and times == 1:
            fields["error_message"] = f"{message}; requeued once (reject_on_worker_lost)"
            outcomes.append(finish_sql.Outcome(row, tables.LOST, now, fields, now, extra_retries=1))
            continue
        retry_at = None
        if retry and row.attempt <= row.retries:
            delay = retry_delay(row) if retry_delay is not None else 0
            retry_at = now + timedelta(seconds=max(0.0, float(delay)))
        outcomes.append(finish_sql.Outcome(row, tables.LOST, now, fields, retry_at))
    if outcomes:
        finish_sql.write_outcomes(conn, outcomes, now)


def held(conn: Connection, worker_id: str, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` still running under ``worker_id`` (not taken by a
    rescuer): a supervisor that learns its member was declared lost stops
    the member's job unless its row is still the member's."""
    if not ids:
        return set()
    stmt = select(request.c.id).where(
        request.c.worker_id == worker_id, request.c.state == tables.RUNNING, request.c.id.in_(sorted(set(ids)))
    )
    return {int(i) for i in conn.execute(stmt).scalars()}


def take_running(conn: Connection, worker_id: str, ids: Sequence[int]) -> list[Row[Any]]:
    """Delete and return the rows of ``ids`` still running under
    ``worker_id`` (a dead member's finished-but-unwritten jobs, whose
    results rescue writes from its ledger)."""
    where = [request.c.worker_id == worker_id, request.c.state == tables.RUNNING, request.c.id.in_(sorted(ids))]
    return dialect_of(conn).delete_returning(conn, request, where, list(request.c))


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


def dead_workers(conn: Connection, before: datetime, limit: int = 20) -> list[str]:
    """Native workers whose last heartbeat is older than ``before``, locked
    (SKIP LOCKED) so that two rescuers never take the same one."""
    stmt = (
        select(worker_table.c.id)
        .where(worker_table.c.kind == "native", worker_table.c.heartbeat_at < before)
        .order_by(worker_table.c.heartbeat_at)
        .limit(limit)
    )
    return list(conn.execute(dialect_of(conn).skip_locked(stmt)).scalars())


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
