"""``jobtable purge`` and ``jobtable clear`` in batches: short transactions
whose progress can be shown.

Purge deletes the pending and scheduled requests that existed when it
started, one primary-key range per transaction: each batch finds the id
of its last row (``ids > after``, in id order, ``batch`` of them) and deletes
that range with the state condition repeated in the DELETE itself.  So:

- a row a worker claims meanwhile is ``running`` when the DELETE reads it
  (PostgreSQL re-reads a row it waited for; SQLite's write lock serialises
  the two), and is left to finish;
- rows enqueued after the start have higher ids than ``last_id`` and are
  kept: purge removes what was there when it was asked to;
- each transaction holds its locks for one batch only, so workers are not
  stalled by a purge of millions of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from . import tables

request = tables.request
result = tables.result

#: Rows per purge transaction: large enough that the round trips do not
#: dominate, small enough that each lock is held for milliseconds.
PURGE_BATCH = 5000


def _purgeable(queue: str | None) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = request.c.state.in_([tables.SCHEDULED, tables.PENDING])
    if queue is not None:
        condition = condition & (request.c.queue == queue)
    return condition


@dataclass(frozen=True)
class PurgePlan:
    """What a purge will go through: the purgeable rows at its start."""

    total: int
    last_id: int


def plan_purge(conn: Connection, queue: str | None) -> PurgePlan:
    count, last = conn.execute(select(func.count(), func.max(request.c.id)).where(_purgeable(queue))).one()
    return PurgePlan(int(count or 0), int(last or 0))


def purge_batch(
    conn: Connection, plan: PurgePlan, queue: str | None, after: int, batch: int = PURGE_BATCH
) -> tuple[int, int | None]:
    """Delete the purgeable rows of the next id range after ``after``.

    Returns (rows deleted, the range's last id), or (0, None) when no range
    is left.  Run each call in its own transaction.
    """
    ids = (
        select(request.c.id)
        .where(_purgeable(queue), request.c.id > after, request.c.id <= plan.last_id)
        .order_by(request.c.id)
        .limit(batch)
        .subquery()
    )
    high = conn.execute(select(func.max(ids.c.id))).scalar()
    if high is None:
        return 0, None
    stmt = delete(request).where(_purgeable(queue), request.c.id > after, request.c.id <= high)
    return conn.execute(stmt).rowcount, int(high)


def count_results_before(conn: Connection, before: datetime) -> int:
    """Results ``jobtable clear`` is about to delete (for its progress bar)."""
    return int(conn.execute(select(func.count()).where(result.c.ended_at < before)).scalar() or 0)
