"""SQL of routed queues (jobtable/routing/, issue 18): the table's part.

A routed queue's jobs live in the broker, except what must wait or be
counted: delayed jobs and retries wait as scheduled rows (promoted as any
others), and a job whose class keeps a concurrency key or its own
``should_enqueue`` keeps its *key row* here while the broker holds it.  The
relay claims a routed queue's pending rows (``claims_sql.claim`` under
``RELAY_ID``), publishes them, and in the same transaction deletes them --
or, for key rows, hands them to ``HOLDER``: still ``running``, so the
unique index and ``count_active_jobs`` see the key until the consumer that
ran the job deletes it (``release_keys``, in its result batch).

Neither id starts with ``native:`` or has a lease: rescue and lease
recovery leave held rows alone (the broker redelivers a killed consumer's
message; the key row waits for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.engine import Connection, Row

from .. import messages
from . import tables

request = tables.request
result = tables.result

#: The worker id of rows a relay has claimed, inside its transaction only.
RELAY_ID = "routed:relay"
#: The worker id of key rows whose job is in the broker.
HOLDER = "routed:held"

_CUSTOM_LIMIT = f'"{messages.CONCURRENCY_LIMIT_HEADER}":'


def keeps_key(concurrency_key: str | None, message: str) -> bool:
    """Whether a routed job's row stays in the table while the broker holds it."""
    return bool(concurrency_key) or _CUSTOM_LIMIT in message


def hand_over(conn: Connection, rows: Sequence[Row[Any]]) -> None:
    """After the relay published ``rows``: delete them, key rows excepted (held)."""
    held = [row.id for row in rows if keeps_key(row.concurrency_key, row.message)]
    gone = [row.id for row in rows if row.id not in set(held)]
    if gone:
        conn.execute(delete(request).where(request.c.id.in_(gone), request.c.worker_id == RELAY_ID))
    if held:
        conn.execute(
            update(request)
            .where(request.c.id.in_(held), request.c.worker_id == RELAY_ID)
            .values(worker_id=HOLDER, started_at=None)
        )


def release_keys(conn: Connection, attempts: Sequence[tuple[str, int]]) -> None:
    """Delete the held key rows of finished attempts ((task id, attempt))."""
    if attempts:
        conn.execute(
            delete(request).where(
                request.c.worker_id == HOLDER,
                tuple_(request.c.task_id, request.c.attempt).in_(list(attempts)),
            )
        )


def recorded(conn: Connection, attempts: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
    """Those of ``attempts`` that already have a result row (a redelivered
    message whose first delivery's result was written before its ack was lost)."""
    if not attempts:
        return set()
    stmt = select(result.c.task_id, result.c.attempt).where(
        tuple_(result.c.task_id, result.c.attempt).in_(list(attempts))
    )
    return {(row.task_id, row.attempt) for row in conn.execute(stmt)}


def held_count(conn: Connection, queues: Sequence[str]) -> dict[str, int]:
    """Key rows held per routed queue (shown beside the broker's depth)."""
    from sqlalchemy import func

    stmt = (
        select(request.c.queue, func.count())
        .where(request.c.worker_id == HOLDER, request.c.queue.in_(list(queues)))
        .group_by(request.c.queue)
    )
    return {queue: int(count) for queue, count in conn.execute(stmt)}
