"""Priority against claimed batches: give back what a higher priority outranks.

A member claims a batch (up to ``max_pending_per_process`` jobs) and runs it
in priority order.  A job of higher priority enqueued meanwhile would wait
for the rest of the batch.  So, between jobs, at most every ``CHECK_EVERY``
seconds, the member asks whether a pending job outranks the next one of its
batch; if so it gives its unstarted jobs back (pending again) and claims
anew, which takes the higher one first.

Cheap when all jobs share one priority: nothing is asked during a batch
shorter than ``CHECK_EVERY`` (fast jobs), and on PostgreSQL with wake-ups
nothing is asked unless a notification for the member's queues arrived
since the claim (a recv on the listening socket, no round trip).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from ..db import claims_sql
from ..db.notify import Listener

#: Seconds between checks while a batch runs.
CHECK_EVERY = 0.05


class PriorityWatch:
    def __init__(self, listener: Listener, queues: Sequence[str]) -> None:
        self.listener = listener
        self.queues = list(queues)
        self.mark: tuple[int, ...] | None = None
        self.checked = 0.0

    def before_claim(self) -> None:
        """Before each claim: notifications that arrive after this are of
        jobs the claim may not have seen."""
        self.mark = self.listener.mark(self.queues)
        self.checked = time.monotonic()

    def due(self) -> bool:
        """Whether to ask now (per job: no I/O, one clock read; on
        PostgreSQL a non-blocking recv at most every CHECK_EVERY)."""
        now = time.monotonic()
        if now - self.checked < CHECK_EVERY:
            return False
        self.checked = now
        if self.mark is not None:
            mark = self.listener.mark(self.queues)
            if mark == self.mark:
                return False
            self.mark = mark
        return True

    def outranked(self, conn: Connection, next_priority: int) -> bool:
        """Whether a pending job outranks ``next_priority`` (after ``due``)."""
        return claims_sql.higher_pending(conn, self.queues, next_priority)
