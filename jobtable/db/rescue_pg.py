"""A dead pool member's rescue in one statement (PostgreSQL; worker/rescue.py).

What the supervisor writes after each member death, in the common case --
the job that killed the process has no retry left and is not due for
quarantine, the batch's finished jobs have known statuses -- is one round
trip instead of six or seven (LOST, the quarantine count, the finished
rows, the release, its NOTIFY, the worker row), with the request rows
copied into results server-side (nothing large travels back).  Rows that
need more than SQL knows -- a LOST job with a retry left (its delay is its
job class's ``calculate_retry_delay``), one whose ``WorkerLost`` attempts
reach ``quarantine_after`` -- are left running under the dead member's id,
kept out of the release, and returned: the caller rescues them the general
way (``rescue_sql.lose``) in the same transaction.

As everywhere in rescue, only rows still running under the dead member's id
are touched: a row another rescuer (or the member itself) already wrote is
safe.  Data-modifying CTEs see one snapshot, so the release names the rows
the other parts take (``keep``) rather than relying on their deletions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection

from .dialects import NOTIFY_CHANNEL
from .tables import LOST, QUARANTINED

_COLUMNS = (
    "task_id, task_name, queue, priority, attempt, retries, concurrency_key, status, requested_at, "
    "started_at, ended_at, worker_id, message, error_type, error_message, retried"
)

_RESCUE_MEMBER_PG = f"""
WITH gone AS (
    SELECT r.id, r.task_id, r.attempt, r.retries FROM jobtable_request r
    WHERE r.id = ANY(%(running)s::int8[]) AND r.worker_id = %(worker)s AND r.state = 'running'
), earlier AS (
    SELECT g.id, g.attempt, g.retries, (
        SELECT count(*) FROM jobtable_result x
        WHERE x.task_id = g.task_id AND x.status IN ('{LOST}', '{QUARANTINED}') AND x.error_type = %(worker_lost)s
    ) AS n
    FROM gone g
), lost AS (
    DELETE FROM jobtable_request r USING earlier e
    WHERE r.id = e.id AND r.worker_id = %(worker)s AND r.state = 'running' AND e.attempt > e.retries
      AND (%(quarantine_after)s::int4 = 0 OR e.n + 1 < %(quarantine_after)s::int4)
    RETURNING r.*
), lost_results AS (
    INSERT INTO jobtable_result ({_COLUMNS})
    SELECT l.task_id, l.task_name, l.queue, l.priority, l.attempt, l.retries, l.concurrency_key, '{LOST}',
           l.created_at, l.started_at, %(now)s, l.worker_id, l.message, %(error_type)s, %(why)s, false
    FROM lost l
    ON CONFLICT DO NOTHING
), fin AS (
    DELETE FROM jobtable_request
    WHERE id = ANY(%(finished)s::int8[]) AND worker_id = %(worker)s AND state = 'running'
    RETURNING *
), fv AS (
    SELECT * FROM unnest(%(finished)s::int8[], %(status)s::varchar[], %(note)s::text[]) AS v(id, status, note)
), fin_results AS (
    INSERT INTO jobtable_result ({_COLUMNS})
    SELECT d.task_id, d.task_name, d.queue, d.priority, d.attempt, d.retries, d.concurrency_key, v.status,
           d.created_at, d.started_at, %(now)s, d.worker_id, d.message, %(result_lost)s, v.note, false
    FROM fin d JOIN fv v ON v.id = d.id
    ON CONFLICT DO NOTHING
), released AS (
    UPDATE jobtable_request
    SET state = 'pending', worker_id = NULL, started_at = NULL, lease_expires_at = NULL
    WHERE worker_id = %(worker)s AND state = 'running'
      AND NOT (id = ANY(%(running)s::int8[]) OR id = ANY(%(finished)s::int8[]))
    RETURNING queue
), woken AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', q) FROM (SELECT DISTINCT queue AS q FROM released) s
), worker_row AS (
    DELETE FROM jobtable_worker WHERE id = %(worker)s
)
SELECT 'lost' AS kind, l.id, l.task_name, l.task_id, l.attempt FROM lost l
UNION ALL SELECT 'left', e.id, NULL, NULL, NULL FROM earlier e WHERE e.id NOT IN (SELECT id FROM lost)
UNION ALL SELECT 'finished', d.id, NULL, NULL, NULL FROM fin d
UNION ALL SELECT 'released', count(*), NULL, NULL, NULL FROM released
UNION ALL SELECT 'woken', count(*), NULL, NULL, NULL FROM woken
"""


@dataclass
class Rescued:
    """What ``rescue_member_pg`` did."""

    #: (id, task_name, task_id, attempt) of the rows recorded LOST.
    lost: list[tuple[int, str, str, int]] = field(default_factory=list)
    #: Started rows left for the general path (a retry to schedule, or quarantine).
    left: list[int] = field(default_factory=list)
    finished: int = 0
    released: int = 0


def rescue_member_pg(
    conn: Connection,
    worker_id: str,
    running: Sequence[int],
    finished: Sequence[tuple[int, str, str]],
    now: datetime,
    *,
    why: str,
    error_type: str,
    result_lost: str,
    worker_lost: str,
    quarantine_after: int,
) -> Rescued:
    """One statement: ``running`` rows LOST (``error_type``, message ``why``;
    those with a retry left, or reaching ``quarantine_after`` -- 0: never --
    are left, see the module), ``finished`` rows (id, status, note) recorded
    with their status (``result_lost``, not retried), every other row the
    member held pending again (its queues NOTIFYed), its worker row gone.
    ``worker_lost``: the error type whose earlier attempts count towards
    quarantine."""
    params = {
        "worker": worker_id,
        "running": sorted(set(running)),
        "finished": [entry[0] for entry in finished],
        "status": [entry[1] for entry in finished],
        "note": [entry[2] for entry in finished],
        "now": now,
        "why": why,
        "error_type": error_type,
        "result_lost": result_lost,
        "worker_lost": worker_lost,
        "quarantine_after": quarantine_after,
    }
    out = Rescued()
    for kind, row_id, task_name, task_id, attempt in conn.exec_driver_sql(_RESCUE_MEMBER_PG, params):
        if kind == "lost":
            out.lost.append((int(row_id), task_name, task_id, int(attempt)))
        elif kind == "left":
            out.left.append(int(row_id))
        elif kind == "finished":
            out.finished += 1
        elif kind == "released":
            out.released = int(row_id)
    return out
