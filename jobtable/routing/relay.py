"""Table -> broker: a routed queue's rows published when they are due.

Run by the supervisor of every worker that consumes routed queues (its
periodic duties, ``worker/main.py``): one transaction promotes due
scheduled rows (delayed jobs, delayed retries), claims the routed queues'
pending rows (``FOR UPDATE SKIP LOCKED``: relays of several workers never
take the same row), publishes them with confirms and deletes them (key
rows are held instead, ``db/routed_sql.py``).  A crash or a failed publish
rolls the transaction back: the rows wait for the next relay.  A commit
that fails after the broker confirmed leaves the messages published and
the rows pending: they are published again (at-least-once).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from .. import badrows
from ..db import claims_sql, routed_sql
from . import publish

#: Rows relayed per transaction.
BATCH = 1000


def relay(conn: Connection, queues: Sequence[str], now: datetime, limit: int = BATCH) -> int:
    """Publish the due rows of ``queues`` (routed); how many were published."""
    claims_sql.promote_due(conn, now)
    rows = claims_sql.claim(conn, queues, limit, worker_id=routed_sql.RELAY_ID, now=now)
    if not rows:
        return 0
    by_queue: dict[str, list[dict[str, Any]]] = {}
    bad: list[tuple[int, str]] = []
    good = []
    for row in rows:
        envelope = badrows.decode_envelope(row.message)
        if isinstance(envelope, badrows.BadRow):
            # Never published: a dead letter here, as a worker would make it.
            bad.append((row.id, envelope.reason))
            continue
        good.append(row)
        by_queue.setdefault(row.queue, []).append(envelope)
    badrows.bury(conn, routed_sql.RELAY_ID, bad, now)
    for queue, envelopes in by_queue.items():
        publish.publish(queue, envelopes)
    routed_sql.hand_over(conn, good)
    return len(good)
