"""Knowing at once that a native worker died, instead of after
``worker_lost_after`` seconds without a heartbeat.

PostgreSQL: each supervisor holds a session advisory lock per member id on
a dedicated connection (``db/liveness.py``), and marks such ids (their
token starts with ``LOCK_MARK``) so that peers only trust a free lock from
workers that hold one (not older versions, nor workers behind PgBouncer in
transaction mode -- ``worker_listen=0`` -- where session locks do not
work).  A member's lock found free twice, ``CONFIRM`` seconds apart, means
its supervisor's session ended: it is dead.  Just after the server
(re)started every lock is free, so no lock is trusted until the server has
been up ``RESTART_GRACE`` seconds (live workers take theirs again within a
tick or two).

SQLite (one host by nature): a row whose hostname is ours and whose pid is
not alive -- or is alive but started after the row was written, i.e. a
reused pid -- is dead at once.

Either way the heartbeat timeout stays the fallback, e.g. for a host cut
off by the network, whose sessions PostgreSQL still thinks alive.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from ..db import engine as db_engine
from ..db import liveness as db_liveness
from ..db import workers_sql
from ..pids import pid_alive

#: The worker id token of members whose supervisor holds their lock.
LOCK_MARK = "L"
#: A free lock must be seen twice this far apart (seconds).
CONFIRM = 0.5
#: No lock is trusted until the server has been up this long (seconds).
RESTART_GRACE = 3.0


def holds_lock(worker_id: str) -> bool:
    return worker_id.rsplit(":", 1)[-1].startswith(LOCK_MARK)


class Liveness:
    def __init__(self, engine: Engine, *, use_locks: bool) -> None:
        self.dialect = engine.dialect.name
        # Session locks need a session: behind a transaction pooler, the
        # direct URL's (none: deaths are found by heartbeats only).
        direct = db_engine.session_engine(engine) if use_locks and self.dialect == "postgresql" else None
        self.session = db_liveness.LockSession(direct) if direct is not None else None
        self.hostname = ""
        self._free_since: dict[str, float] = {}

    @property
    def why(self) -> str:
        """How the death was known, for the LOST message."""
        if self.dialect in ("sqlite", "mysql"):
            return "died (its process no longer exists)"
        return "died (its database session ended)"

    @property
    def mark(self) -> str:
        """The token prefix of new member ids ("" without locks)."""
        return LOCK_MARK if self.session is not None else ""

    def hold(self, worker_id: str) -> None:
        if self.session is not None:
            self.session.hold(db_liveness.lock_key(worker_id))

    def release(self, worker_id: str) -> None:
        if self.session is not None:
            self.session.release(db_liveness.lock_key(worker_id))

    def tick(self) -> None:
        if self.session is not None:
            self.session.ensure()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def dead(self, conn: Connection, own: Collection[str], hostname: str) -> list[str]:
        """Ids of other native workers known to be dead now."""
        rows = [row for row in workers_sql.native_workers(conn) if row.id not in own]
        if not rows:
            self._free_since.clear()
            return []
        # MySQL: by pid too, for now (GET_LOCK sessions would serve as
        # PostgreSQL's advisory locks do; until then, heartbeats elsewhere).
        if self.dialect in ("sqlite", "mysql"):
            return [row.id for row in rows if row.hostname == hostname and not pid_alive(row.pid, row.started_at)]
        if self.session is None or not self.session.connected:
            return []  # our own session is down: a free lock proves nothing now
        marked = [row.id for row in rows if holds_lock(row.id)]
        if not marked or not db_liveness.locks_trusted(conn, self.session, RESTART_GRACE):
            self._free_since.clear()
            return []
        keys = {db_liveness.lock_key(worker_id): worker_id for worker_id in marked}
        free = {keys[k] for k in db_liveness.free_keys(conn, list(keys))}
        now = time.monotonic()
        self._free_since = {w: self._free_since.get(w, now) for w in free}
        return sorted(w for w, since in self._free_since.items() if now - since >= CONFIRM)
