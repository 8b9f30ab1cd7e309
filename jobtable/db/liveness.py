"""SQL of fast death detection: session advisory locks held by live workers.

Each native worker supervisor holds, on one dedicated connection, a
session-level advisory lock per member id (``lock_key``).  PostgreSQL ends
the session of a process that died -- even by SIGKILL -- and so frees its
locks; a peer that finds a member's lock free knows at once that nobody
holds it any more.  ``free_keys`` asks ``pg_locks`` about all candidates in
one query (locks of this database only).

Hash collisions only ever delay a rescue: a dead worker whose key collides
with a live one's looks alive and falls back to the heartbeat timeout.
"""

from __future__ import annotations

import hashlib
import logging
import select
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger("jobtable.worker")

_FREE_SQL = text(
    "SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k WHERE NOT EXISTS ("
    " SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = k)"
)
_UPTIME_SQL = text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")


def lock_key(worker_id: str) -> int:
    """A positive 63-bit advisory lock key for a worker id."""
    return int.from_bytes(hashlib.blake2b(worker_id.encode("utf-8", "replace"), digest_size=8).digest(), "big") >> 1


def free_keys(conn: Connection, keys: Sequence[int]) -> set[int]:
    """The ``keys`` no session of this database holds (one query)."""
    if not keys:
        return set()
    return {int(k) for k in conn.execute(_FREE_SQL, {"keys": list(keys)}).scalars()}


def server_uptime(conn: Connection) -> float:
    """Seconds since the PostgreSQL server started (its own clock)."""
    return float(conn.execute(_UPTIME_SQL).scalar_one())


def locks_trusted(conn: Connection, session: LockSession, grace: float) -> bool:
    """Whether a free lock now says that its holder died.

    Not until the server has been up ``grace`` seconds (after a restart
    every lock is free until live holders take theirs again), nor until
    ``grace`` seconds after our own session last connected again: a
    failover to a promoted replica -- a server up for long, holding none
    of the locks taken on the old primary -- ends every holder's session
    at once, and they take their locks again on the new server about when
    we did.  A server's uptime alone would trust the new primary's free
    locks at once and declare every live worker dead.
    """
    # A session lost since the last look is seen now (a cheap select), not
    # after the caller trusted what the new server's pg_locks say.
    if not session.ensure() or not session.connected:
        return False  # our own session is down: a free lock proves nothing now
    if session.reconnected_at is not None and time.monotonic() - session.reconnected_at < grace:
        return False
    return server_uptime(conn) >= grace


class LockSession:
    """One dedicated autocommit connection holding session advisory locks;
    it notices its own death (the socket turns readable) and takes its
    locks again on a new connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Any = None
        self.keys: set[int] = set()
        #: Monotonic time this session last connected again after losing
        #: its connection (None: never lost one).
        self.reconnected_at: float | None = None
        self._ever_connected = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _connect(self) -> bool:
        try:
            raw = self._engine.raw_connection()
            conn = raw.driver_connection
            raw.detach()  # ours alone: the pool must never hand it out
            assert conn is not None
            conn.autocommit = True
            self._conn = conn
            if self._ever_connected:
                self.reconnected_at = time.monotonic()
            self._ever_connected = True
        except Exception as exc:
            logger.warning("Cannot open the liveness connection yet (%s).", _first_line(exc))
            self._conn = None
            return False
        return self._lock(self.keys)

    def _lock(self, keys: Iterable[int]) -> bool:
        wanted = sorted(keys)
        if not wanted:
            return True
        try:
            taken = self._conn.execute(
                "SELECT pg_try_advisory_lock(k) FROM unnest(%s::bigint[]) AS k", [wanted]
            ).fetchall()
        except Exception as exc:
            logger.warning("Liveness connection lost (%s); reconnecting.", _first_line(exc))
            self._drop()
            return False
        if not all(row[0] for row in taken):
            # Another session holds a colliding key: that member only loses
            # fast detection (peers see the lock held and wait for the timeout).
            logger.info("An advisory lock key of this worker is held elsewhere; using the heartbeat timeout for it.")
        return True

    def hold(self, key: int) -> bool:
        """Take ``key`` (and keep taking it after reconnects).  False when
        the database cannot be reached: ``ensure`` retries."""
        self.keys.add(key)
        if self._conn is None:
            return self._connect()
        return self._lock([key])

    def release(self, key: int) -> None:
        self.keys.discard(key)
        if self._conn is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s::bigint)", [key])
            except Exception:
                self._drop()

    def ensure(self) -> bool:
        """Cheap check (a zero-timeout select on the socket); reconnect and
        lock again when the server closed the session."""
        if self._conn is None:
            return self._connect()
        try:
            ready, _, _ = select.select([self._conn.pgconn.socket], [], [], 0)
            if ready:
                # An idle session only gets data when the server ends it.
                self._conn.execute("SELECT 1")
        except Exception:
            self._drop()
            return self._connect()
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        self.keys.clear()
        self._drop()


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__
