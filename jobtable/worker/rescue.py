"""LOST jobs: members that died, and workers that stopped heartbeating.

Every supervisor rescues on a timer.  ``dead_workers`` locks the rows it
picks (SKIP LOCKED on PostgreSQL; SQLite transactions hold the write lock),
so several workers rescuing at once never record a job LOST twice -- and the
guarded completion (``store.finish``) means a job declared LOST can never
write a second result if its worker was only slow, not dead.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from ..db import store
from ..messages import decode_task

logger = logging.getLogger("jobtable.worker")


def retry_delay(row: Any) -> float:
    """``calculate_retry_delay(attempt)`` of a lost job, when this process
    knows its class; 0 otherwise (and when anything goes wrong)."""
    try:
        from . import dispatch

        prepared = dispatch.prepare(decode_task(row.message))
        if prepared.retry_delay is None:
            return 0.0
        value = prepared.retry_delay(row.attempt)
        return value.total_seconds() if isinstance(value, timedelta) else float(value or 0)
    except Exception:
        return 0.0


def _log_lost(rows: list[Any], why: str) -> None:
    for row in rows:
        retry = "; retrying" if row.attempt <= row.retries else ""
        logger.warning("%s %s attempt %s LOST: %s%s", row.task_name, row.task_id, row.attempt, why, retry)


def rescue_member(
    conn: Connection, worker_id: str, running_id: int, now: datetime, *, why: str, lose_running: bool = True
) -> tuple[int, int]:
    """A member of ours ended: its running job is LOST, the jobs it had
    claimed but not started go back to pending, its row goes.
    Returns (lost, released)."""
    lost: list[Any] = []
    if running_id and lose_running:
        lost = store.lose(conn, worker_id, [running_id], now, message=why, retry_delay=retry_delay)
        _log_lost(lost, why)
    released = store.release(conn, worker_id, None)
    store.delete_workers(conn, [worker_id])
    return len(lost), released


def rescue_dead(conn: Connection, lost_after: float, now: datetime) -> int:
    """Record LOST the running jobs of native workers silent for ``lost_after``
    seconds (and of ids with no worker row at all); returns how many."""
    before = now - timedelta(seconds=lost_after)
    total = 0
    dead = store.dead_workers(conn, before)
    for worker_id in dead:
        why = f"worker {worker_id} stopped sending heartbeats (none for {lost_after:g} s)"
        rows = store.lose(conn, worker_id, None, now, message=why, retry_delay=retry_delay)
        _log_lost(rows, why)
        total += len(rows)
    store.delete_workers(conn, dead)
    for worker_id in store.orphan_workers(conn, before):
        why = f"worker {worker_id} has no heartbeat row"
        rows = store.lose(conn, worker_id, None, now, message=why, retry_delay=retry_delay)
        _log_lost(rows, why)
        total += len(rows)
    return total


def rescue_known_dead(conn: Connection, worker_ids: list[str], now: datetime, *, why: str) -> int:
    """Record LOST the running jobs of native workers known to be dead now
    (see ``liveness.py``), without waiting for their heartbeat to age."""
    total = 0
    dead = store.lock_workers(conn, worker_ids)
    for worker_id in dead:
        rows = store.lose(conn, worker_id, None, now, message=f"worker {worker_id} {why}", retry_delay=retry_delay)
        _log_lost(rows, f"worker {worker_id} {why}")
        total += len(rows)
    store.delete_workers(conn, dead)
    return total
