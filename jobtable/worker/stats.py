"""The ``--stats-every`` line: queue depth, running jobs, jobs/s."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from ..db import reads_sql

logger = logging.getLogger("jobtable.stats")


class StatsReporter:
    def __init__(self, queues: Sequence[str]) -> None:
        self.queues = list(queues)
        self.last_done = 0
        self.last_time = time.monotonic()

    def report(self, conn: Connection, done_total: int) -> str:
        depth = reads_sql.queue_depth(conn, self.queues)
        now = time.monotonic()
        rate = (done_total - self.last_done) / max(now - self.last_time, 1e-9)
        self.last_done, self.last_time = done_total, now
        line = (
            f"stats: queues={','.join(self.queues)} pending={depth['pending']} scheduled={depth['scheduled']} "
            f"running={depth['running']} claimed={depth['claimed']} done={done_total} rate={rate:.1f} jobs/s"
        )
        logger.info(line)
        return line
