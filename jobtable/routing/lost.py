"""Recording the jobs of a routed member that died (issue 18, the routed
side of ``worker/rescue.py``).

A routed member's jobs are deliveries, not rows: what its supervisor knows
of them comes from the routed part of its ledger (worker/routed_ledger.py),
which kept the queue and stored message of every job it started since its
last committed flush.  From those the supervisor makes the request rows they
would have been and records them as the table path records a dead member's
(``rescue.record_rows``, the same rules): the running one LOST (a retry in
the table's scheduled rows, which the relay publishes when due) or, after
``worker_quarantine_after`` kills, QUARANTINED; finished ones with the
status they ended with.  Attempts already recorded (the member committed
their batch and died before emptying its ledger) are left alone, and the key
rows of the recorded ones are released in the same transaction.

The supervisor writes this before it closes its copy of the member's broker
socket: when the broker then redelivers the messages, the recorded ones are
acked without running (``RoutedMember._recorded``), the ones only
prefetched run once.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from sqlalchemy.engine import Connection

from .. import messages
from ..db import clock, routed_sql
from ..worker import rescue
from ..worker.routed_ledger import RoutedJob

logger = logging.getLogger("jobtable.worker")


def row_of(job: RoutedJob, worker_id: str, row_id: int, now: datetime) -> Any:
    """The request row ``job`` was run as (``RoutedMember._row_of``), or
    None when its kept message cannot be read (never raises)."""
    try:
        values = messages.row_values(json.loads(job.message), job.queue, now, message=job.message)
    except Exception:  # noqa: BLE001 - the member ran it, so this is not expected
        return None
    started = datetime.fromtimestamp(job.started, timezone.utc) + timedelta(seconds=clock.offset())
    return SimpleNamespace(id=row_id, worker_id=worker_id, started_at=started, lease_expires_at=None, crashes=0,
                           **values)


def record_dead_member(
    conn: Connection,
    worker_id: str,
    jobs: list[RoutedJob],
    complete: bool,
    now: datetime,
    *,
    why: str,
    why_finished: str,
    poison: bool,
    quarantine_after: int | None = None,
) -> int:
    """Record what the dead routed member ``worker_id`` started and did not
    write (``jobs``, from its ledger); returns how many were recorded."""
    if not complete:
        logger.error("Worker %s: a job's message did not fit in its ledger; if it was running, the broker "
                     "delivers it again.", worker_id)
    rows: list[tuple[Any, RoutedJob]] = []
    for index, job in enumerate(jobs):
        row = row_of(job, worker_id, -1 - index, now)
        if row is None:
            logger.error("Worker %s: a job in its ledger cannot be read; the broker delivers it again.", worker_id)
            continue
        rows.append((row, job))
    if not rows:
        return 0
    written = routed_sql.recorded(conn, [(row.task_id, row.attempt) for row, _ in rows])
    rows = [(row, job) for row, job in rows if (row.task_id, row.attempt) not in written]
    # Key rows first: a retry inserted below takes the same key.
    routed_sql.release_keys(conn, [
        (row.task_id, row.attempt) for row, _ in rows if routed_sql.keeps_key(row.concurrency_key, row.message)
    ])
    return rescue.record_rows(
        conn,
        [row for row, job in rows if not job.status],
        [(row, job.status, job.retry) for row, job in rows if job.status],
        now,
        why=why,
        why_finished=why_finished,
        poison=poison,
        quarantine_after=quarantine_after,
    )
