"""The clock of every time jobtable stores: the database's, not the host's.

Every lease, heartbeat, due time and schedule slot is compared with times
other hosts wrote, so they must all come from one clock.  Asking the server
for ``now()`` in every statement would cost a round trip (or rewrite every
statement per dialect); instead each process measures how far its own wall
clock is from the server's -- one ``SELECT`` of the server's clock, timed on
both sides -- and ``utcnow()`` is the host's time corrected by that offset.
The error is at most half the round trip of the measuring query (samples
taking longer than ``MAX_RTT`` are not trusted), whatever the host's clock
says: a host 45 s off (no NTP, a VM resumed from suspend) reads the
database's time within milliseconds.

When: at a process's first ``utcnow()`` (``set_first_sync``: the engine
module checks out a connection of the default database once, so that even
the first enqueue of a process is on the database's clock), at the first
checkout of a pooled connection, and again every
``SYNC_EVERY`` seconds at a checkout (``on_checkout``, a pool event of
PostgreSQL and MySQL engines: ``db/engine.py``), and by code that keeps one
connection for long (``maybe_sync``: the worker's members).  After a failover the next
connection may reach another server with another clock (a promoted replica,
a libpq multi-host URL): a lost connection (``lost_connection``, the
engine's ``handle_error`` event) and a new connection to another host and
port than the offset was measured on (``on_connect``) make the offset due
again, so the first checkout that follows measures it on the new server.
A forked child inherits its parent's offset.  SQLite is one host's file by nature: its
clock is the host's (offset 0).

Times stay aware UTC datetimes passed to SQL as bound parameters
(``types.UTCDateTime`` stores them alike on every dialect).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("jobtable.db")

#: Seconds between two measurements of the offset in one process.
SYNC_EVERY = 30.0
#: A measurement whose round trip took longer says too little (its error is
#: up to half of it): kept only when there is no offset yet.
MAX_RTT = 1.0
#: The server's current time (not the transaction's start) per dialect.
_NOW_SQL = {
    "postgresql": "SELECT clock_timestamp()",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
}
#: An offset this large is worth a warning once: the host's clock is wrong.
WARN_OFFSET = 2.0

_offset = timedelta(0)
_synced_at: float | None = None  # monotonic time of the last trusted sample
_rtt = 0.0
_warned = False
_first_sync: Callable[[], None] | None = None
_tried_first = False
#: The server (host, port) the offset was measured on, as the driver says.
_server: Any = None
#: True when the offset may be another server's: measure at the next chance.
_stale = False


def set_first_sync(fn: Callable[[], None]) -> None:
    """``fn`` measures the offset (by checking out a connection) when a
    process asks for the time before it ever connected."""
    global _first_sync
    _first_sync = fn


def utcnow() -> datetime:
    """The database's current time (aware UTC), as this process knows it."""
    global _tried_first
    if _synced_at is None and not _tried_first and _first_sync is not None:
        _tried_first = True  # once per process, whatever happens: never a connect per call
        try:
            _first_sync()
        except Exception as exc:
            logger.debug("Could not read the database's clock yet (%s).", type(exc).__name__)
    return datetime.now(timezone.utc) + _offset


def offset() -> float:
    """Seconds the database's clock is ahead of this host's (as measured)."""
    return _offset.total_seconds()


def due() -> bool:
    return _stale or _synced_at is None or time.monotonic() - _synced_at >= SYNC_EVERY


def lost_connection() -> None:
    """A connection was lost: the next one may reach another server (a
    failover), whose clock is not the one measured."""
    global _stale
    _stale = True


def server_of(dbapi_conn: Any) -> Any:
    """Where a DBAPI connection went, without a round trip (psycopg reads
    it from libpq: with a multi-host URL, the host that answered); None
    when the driver does not tell."""
    info = getattr(dbapi_conn, "info", None)
    try:
        return (info.host, info.port) if info is not None else None
    except Exception:
        return None


def measure(dbapi_conn: Any, dialect: str) -> bool:
    """Measure the offset on a DBAPI connection of ``dialect``; True when a
    sample was taken.  Never raises: a failure keeps the offset we had (the
    caller's own statement then meets the broken connection)."""
    global _offset, _synced_at, _rtt, _warned, _server, _stale
    sql = _NOW_SQL.get(dialect)
    if sql is None:
        return False
    try:
        cursor = dbapi_conn.cursor()
        try:
            before = time.time()
            mono = time.monotonic()
            cursor.execute(sql)
            server = cursor.fetchone()[0]
            after = time.time()
        finally:
            cursor.close()
        # Leave no transaction open behind the caller (a no-op in autocommit).
        dbapi_conn.rollback()
    except Exception as exc:
        logger.debug("Could not read the database's clock (%s).", type(exc).__name__)
        return False
    if not isinstance(server, datetime):
        return False
    if server.tzinfo is None:  # MySQL: naive UTC
        server = server.replace(tzinfo=timezone.utc)
    rtt = after - before
    if rtt > MAX_RTT and _synced_at is not None and not _stale:
        # A slow sample is still better than an offset of another server.
        return False
    midpoint = datetime.fromtimestamp((before + after) / 2, timezone.utc)
    _offset = server - midpoint
    _synced_at = mono
    _rtt = rtt
    _server = server_of(dbapi_conn)
    _stale = False
    if abs(offset()) >= WARN_OFFSET and not _warned:
        _warned = True
        logger.warning(
            "This host's clock is %.1f s %s the database's; jobtable uses the database's time "
            "(fix the host's clock: NTP).", abs(offset()), "behind" if offset() > 0 else "ahead of",
        )
    return True


def on_connect(dbapi_conn: Any, record: Any) -> None:
    """Pool ``connect`` listener: a new connection to another server than
    the one measured (a multi-host URL's next host) makes the offset due."""
    global _stale
    if _synced_at is not None and server_of(dbapi_conn) != _server:
        _stale = True


def on_error(context: Any) -> None:
    """Engine ``handle_error`` listener."""
    if getattr(context, "is_disconnect", False):
        lost_connection()


def on_checkout(dbapi_conn: Any, record: Any, proxy: Any, *, dialect: str) -> None:
    """Pool ``checkout`` listener: measure when a measurement is due."""
    if due():
        measure(dbapi_conn, dialect)


def maybe_sync(conn: Any) -> None:
    """Measure on a SQLAlchemy ``Connection`` held for long, when due."""
    if not due() or conn.dialect.name not in _NOW_SQL:
        return
    try:
        dbapi_conn = conn.connection.dbapi_connection
    except Exception:
        return
    if dbapi_conn is None:
        return
    if conn.in_transaction() and getattr(dbapi_conn, "autocommit", False) is not True:
        return  # its rollback would end the caller's transaction
    measure(dbapi_conn, conn.dialect.name)


def reset() -> None:
    """Forget the offset (tests)."""
    global _offset, _synced_at, _rtt, _warned, _tried_first, _server, _stale
    _offset, _synced_at, _rtt, _warned, _tried_first = timedelta(0), None, 0.0, False, False
    _server, _stale = None, False
