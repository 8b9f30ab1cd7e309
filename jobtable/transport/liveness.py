"""Knowing at once that a Kombu consumer died, instead of after its leases
(60 s by default) run out.

As for native workers (``worker/liveness.py``): on PostgreSQL each consumer
process holds a session advisory lock named after its consumer id on a
dedicated connection, and marks its id (``LOCK_MARK`` before its token);
a peer that finds a marked consumer's lock free twice, ``CONFIRM`` seconds
apart, on a server up for ``RESTART_GRACE`` seconds, puts its messages back
to pending at once.  On SQLite a consumer row of this host whose pid is gone
is dead.  Leases stay the fallback (hosts cut off by the network, and
``wakeups=False`` -- PgBouncer in transaction mode, where session locks do
not work).
"""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy.engine import Connection, Engine

from ..db import engine as db_engine
from ..db import liveness as db_liveness
from ..db import clock, leases_sql, workers_sql
from ..pids import pid_alive

LOCK_MARK = "L"
CONFIRM = 0.5
RESTART_GRACE = 3.0
#: How often the lease keeper looks (seconds).
EVERY = 0.5


def holds_lock(consumer_id: str) -> bool:
    return consumer_id.rsplit(":", 1)[-1].startswith(LOCK_MARK)


class ConsumerLiveness:
    def __init__(self, engine: Engine, *, use_locks: bool) -> None:
        self.dialect = engine.dialect.name
        # Session locks need a session: behind a transaction pooler, the
        # direct URL's (none: deaths are found by heartbeats only).
        direct = db_engine.session_engine(engine) if use_locks and self.dialect == "postgresql" else None
        self.session = db_liveness.LockSession(direct) if direct is not None else None
        self._free_since: dict[str, float] = {}

    def hold(self, consumer_id: str) -> None:
        if self.session is not None:
            self.session.hold(db_liveness.lock_key(consumer_id))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def expire(self, conn: Connection, own: str) -> int:
        """End the leases of consumers known dead; returns how many messages
        they held (the caller's lease recovery requeues or quarantines them)."""
        if self.session is not None:
            self.session.ensure()
        rows = [row for row in workers_sql.native_workers(conn, kind="kombu") if row.id != own]
        dead: list[str] = []
        # MySQL: no lock sessions yet (GET_LOCK ones would do): as on SQLite,
        # consumers on this host whose process is gone.
        if self.dialect in ("sqlite", "mysql"):
            host = socket.gethostname()
            dead = [
                row.id
                for row in rows
                if row.hostname == host and row.pid != os.getpid() and not pid_alive(row.pid, row.started_at)
            ]
        elif self.session is not None and self.session.connected:
            marked = [row.id for row in rows if holds_lock(row.id)]
            if marked and db_liveness.locks_trusted(conn, self.session, RESTART_GRACE):
                keys = {db_liveness.lock_key(c): c for c in marked}
                free = {keys[k] for k in db_liveness.free_keys(conn, list(keys))}
                now = time.monotonic()
                self._free_since = {c: self._free_since.get(c, now) for c in free}
                dead = [c for c, since in self._free_since.items() if now - since >= CONFIRM]
            else:
                self._free_since.clear()
        if not dead:
            return 0
        return leases_sql.transport_expire_consumers(conn, workers_sql.lock_workers(conn, dead), clock.utcnow())
