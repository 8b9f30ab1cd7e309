"""Wake-ups: "something may be ready on queues X", with a timeout.

PostgreSQL: inserts send ``NOTIFY jobtable, '<queue>'`` (see
``dialects.PostgresDialect.insert_requests``); a ``Listener`` holds one
dedicated connection that LISTENs and waits on its socket, so a worker wakes
within a millisecond or two of an enqueue.  A worker member instead LISTENs
on the connection it claims on (``PgSharedListener``): one backend per
member, not two -- a member that dies and is replaced costs one new
backend, not two.

SQLite: no notifications exist, but ``PRAGMA data_version`` changes whenever
another connection commits; reading it costs microseconds and takes no lock,
so the listener polls it every few milliseconds and wakes the caller only
when the database changed.

MySQL/MariaDB: no notifications either; every enqueue moves the largest id of
``jobtable_request``, which InnoDB reads from the primary key's last entry
(no row scan, no lock), so the listener polls that every few milliseconds --
a change check, not a claim query.  Rows made pending again without a new id
(released, promoted, rescued) are found by the caller's timed claim.

Either way a wake-up is a hint, never a promise: the caller claims, and if
nothing was there it waits again.  A timeout always returns, so callers that
poll (behind PgBouncer, where LISTEN does not work) still make progress.

The API is generic so that the Kombu transport can reuse it::

    listener = Listener.create(engine, ["default"])
    while True:
        ...claim...
        listener.wait(timeout=1.0)
    listener.close()
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.engine import Engine

from . import engine as db_engine
from .dialects import BINDINGS_CHANGED, NOTIFY_CHANNEL

logger = logging.getLogger("jobtable.notify")

#: The one channel; the payload is the queue name.
CHANNEL = NOTIFY_CHANNEL

#: SQLite: how often the data version is read while waiting (seconds).
SQLITE_POLL = 0.002
#: MySQL: how often the largest request id is read while waiting (seconds):
#: about 200 cheap primary-key reads a second per idle worker member.
MYSQL_POLL = 0.005
#: PgSharedListener: payloads kept from notifications that arrived during
#: the owner's statements, before they are read; past this many they are
#: dropped and the next read says "something may be ready" (a hint, as any).
BACKLOG_MAX = 1000


class Listener:
    """Wait until jobs may be ready on ``queues`` (or ``timeout`` passes)."""

    def __init__(self, queues: Iterable[str]) -> None:
        self.queues = frozenset(queues)
        # A self-pipe: interrupt() (signal handlers, other threads) ends a wait.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False

    @staticmethod
    def create(
        engine: Engine,
        queues: Iterable[str],
        *,
        use_notify: bool = True,
        channel: str = CHANNEL,
        shared: bool = False,
    ) -> Listener:
        """The best listener for ``engine``: LISTEN/NOTIFY on PostgreSQL
        (unless ``use_notify`` is False, e.g. behind PgBouncer in transaction
        mode), data-version polling on SQLite, plain timeouts otherwise.
        ``shared``: on PostgreSQL with psycopg, LISTEN on the caller's own
        connection, handed over with ``attach`` (``PgSharedListener``)."""
        if engine.dialect.name == "postgresql" and use_notify:
            # Behind a transaction pooler LISTEN needs the direct URL's own
            # session; without one the caller polls (plain timeouts).
            direct = db_engine.session_engine(engine)
            if direct is None:
                return Listener(queues)
            if shared and direct is engine and engine.dialect.driver == "psycopg":
                # The caller's own connection is a server session of its
                # own (no pooler in between): LISTEN there, one backend.
                return PgSharedListener(engine, queues, channel=channel)
            return PgListener(direct, queues, channel=channel)
        if engine.dialect.name == "sqlite":
            return SqliteListener(engine, queues)
        if engine.dialect.name == "mysql":
            return MysqlListener(engine, queues)
        return Listener(queues)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds.  True: something may be ready (or
        the wait was interrupted); False: the timeout passed quietly."""
        return self._sleep(timeout)

    def consume(self) -> None:
        """Read and drop notifications that arrived meanwhile, without waiting.

        Call it now and then while busy: a listener that never reads keeps
        PostgreSQL from trimming its notification queue."""

    def mark(self, queues: Iterable[str]) -> tuple[int, ...] | None:
        """A value that changes whenever a notification for one of
        ``queues`` arrives (reading what has arrived first), or None when
        this listener cannot tell queues apart.  Equal marks before and after
        an empty claim mean nothing was added to those queues since."""
        return None

    def fds(self) -> list[int]:
        """File descriptors that turn readable when a wait would end (for an
        event loop, e.g. Celery's hub).  The connection's may change after a
        reconnect: ask again after ``clear``."""
        return [self._wake_r]

    def attach(self, conn: Any) -> None:
        """The owner's new SQLAlchemy connection (call before claiming on
        it): only a ``PgSharedListener`` listens on it; others have their own."""

    def detach(self, conn: Any = None) -> None:
        """The owner is about to drop or close its connection (``conn``:
        it is going back to a pool, so stop listening on it first)."""

    def wants_connection(self) -> bool:
        """True when the owner should ``attach`` its connection (again)."""
        return False

    def clear(self) -> None:
        """Read what made the fds readable (wake-ups, notifications), without
        waiting."""
        self._drain_pipe()
        self.consume()

    def interrupt(self) -> None:
        """End the current (or next) wait at once.  Safe from signal handlers."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is already pending

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- helpers ---------------------------------------------------------------

    def _drain_pipe(self) -> bool:
        woke = False
        try:
            while os.read(self._wake_r, 512):
                woke = True
        except (BlockingIOError, OSError):
            pass
        return woke

    def _sleep(self, timeout: float, extra: list[int] | None = None) -> bool:
        """select() on the wake pipe (and ``extra`` fds).  True when woken."""
        fds = [self._wake_r] + (extra or [])
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return True
        if self._wake_r in ready:
            self._drain_pipe()
            return True
        return bool(ready)


class PgListener(Listener):
    """LISTEN on a dedicated autocommit connection; reconnects by itself."""

    def __init__(self, engine: Engine, queues: Iterable[str], *, channel: str = CHANNEL) -> None:
        super().__init__(queues)
        self._engine = engine
        self._channel = channel
        self._conn: Any = None
        #: Notifications seen per queue of interest, and a counter bumped when
        #: notifications may have been missed (reconnect) or name no queue.
        self._seen: dict[str, int] = {}
        self._epoch = 0
        #: Payloads psycopg read during statements on the connection (a
        #: shared one runs the owner's): its notify handler keeps them here.
        self._backlog: deque[str] = deque()
        self._overflow = False
        #: Called (with no argument) when a BINDINGS_CHANGED notification
        #: arrives; the Kombu transport drops its binding cache.
        self.on_bindings_changed: Callable[[], None] | None = None
        self._connect_quietly()

    def _connect_quietly(self) -> bool:
        try:
            raw = self._engine.raw_connection()
            conn = raw.driver_connection
            raw.detach()  # ours alone: the pool must never hand it out
            assert conn is not None, "no DBAPI connection"  # a fresh pool connection always has one
            conn.autocommit = True
            conn.execute(f"LISTEN {self._channel}")
            self._conn = conn
            self._epoch += 1  # what was sent while not listening is unknown
            return True
        except Exception as exc:  # the database is down: the caller polls meanwhile
            logger.warning("LISTEN failed (%s); polling until the database is back.", _first_line(exc))
            self._conn = None
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _pending_match(self) -> bool:
        """Consume what the socket has; True if a notification names our queues."""
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        matched = False
        if self._overflow:
            self._overflow = False
            self._epoch += 1  # some were dropped: say "look" for every queue
            matched = True
        while self._backlog:
            matched = self._note(self._backlog.popleft()) or matched
        while True:
            note = pgconn.notifies()
            if note is None:
                return matched
            matched = self._note(note.extra.decode("utf-8", "replace")) or matched

    def _note(self, payload: str) -> bool:
        """Count one notification; True if it names our queues."""
        if payload == BINDINGS_CHANGED:
            if self.on_bindings_changed is not None:
                self.on_bindings_changed()
            return False
        if payload == "*":
            self._epoch += 1
            return True
        if payload in self.queues:
            self._seen[payload] = self._seen.get(payload, 0) + 1
            return True
        return not self.queues

    def fds(self) -> list[int]:
        if self._conn is None:
            self._connect_quietly()
        return [self._wake_r] + ([self._conn.pgconn.socket] if self._conn is not None else [])

    def consume(self) -> None:
        if self._conn is None:
            return
        try:
            self._pending_match()
        except Exception as exc:
            logger.warning("LISTEN connection lost (%s); reconnecting.", _first_line(exc))
            self._drop()
            self._connect_quietly()

    def mark(self, queues: Iterable[str]) -> tuple[int, ...] | None:
        wanted = frozenset(queues)
        if not wanted <= self.queues:
            # Count them from now on; earlier notifications were not counted.
            self.queues = self.queues | wanted
            self._epoch += 1
        if len(self._seen) > 10_000:  # e.g. many short-lived reply queues
            self._seen.clear()
            self._epoch += 1
        self.consume()
        if self._conn is None:
            return None
        return (self._epoch, *(self._seen.get(queue, 0) for queue in sorted(wanted)))

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._conn is None and not self._connect_quietly():
            # The database is down: pause a little, then let the caller try
            # (its claim fails and backs off too).
            self._sleep(min(timeout, 0.5))
            return True
        try:
            if self._pending_match():
                return True
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                fd = self._conn.pgconn.socket
                ready, _, _ = select.select([self._wake_r, fd], [], [], remaining)
                if not ready:
                    return False
                if self._wake_r in ready:
                    self._drain_pipe()
                    return True
                if self._pending_match():
                    return True
                # Only notifications for other queues: keep waiting.
        except Exception as exc:
            # The connection died (server restart, pg_terminate_backend):
            # reconnect, and tell the caller to look, since notifications sent
            # meanwhile were lost.
            logger.warning("LISTEN connection lost (%s); reconnecting.", _first_line(exc))
            self._drop()
            self._connect_quietly()
            return True

    def close(self) -> None:
        self._drop()
        super().close()


class PgSharedListener(PgListener):
    """LISTEN on its owner's connection (a worker member's, the one it claims
    on), not a dedicated one: one backend per member instead of two, so a
    replaced member costs one new backend (~1.5 ms of server CPU and a
    client connect) less.  The owner hands over each new connection with
    ``attach`` before its first claim, and calls ``detach`` before it drops
    or closes it; waits happen in the owner's thread, between its
    statements, on the connection's socket.  Notifications that arrive
    while the owner's statements run are read by psycopg, not by a wait:
    its notify handler keeps their payloads (``_backlog``) for the next
    read, so none is missed.  Without a connection (the owner's connect
    failed) a wait is a plain interruptible sleep: the owner's next
    statement reconnects."""

    def _connect_quietly(self) -> bool:
        return self._conn is not None  # never a connection of its own

    def attach(self, conn: Any) -> None:
        driver = conn.connection.driver_connection
        self.detach()
        # Through SQLAlchemy: on the owner's autocommit connection it is its
        # own transaction, and a lost connection raises what the owner's
        # error handling expects (DBAPIError).
        conn.exec_driver_sql(f"LISTEN {self._channel}")
        driver.add_notify_handler(self._on_notify)
        self._conn = driver
        self._epoch += 1  # what was sent while not listening is unknown

    def _on_notify(self, note: Any) -> None:
        if note.channel != self._channel:
            return
        if len(self._backlog) >= BACKLOG_MAX:
            self._backlog.clear()
            self._overflow = True
        self._backlog.append(note.payload)

    def detach(self, conn: Any = None) -> None:
        driver, self._conn = self._conn, None
        self._backlog.clear()
        if driver is not None:
            try:
                driver.remove_notify_handler(self._on_notify)
            except ValueError:  # pragma: no cover - attach always adds it
                pass
        if conn is not None:
            # Back to a pool (a threads-pool member's connection): a
            # listening connection nobody reads would grow psycopg's backlog
            # and keep the server's notification queue from being trimmed.
            conn.exec_driver_sql("UNLISTEN *")

    def wants_connection(self) -> bool:
        return self._conn is None

    def _drop(self) -> None:
        # The connection failed under a wait: the owner attaches it again
        # before its next statement, which fails if the connection is dead
        # (and the owner's reconnect attaches the new one).
        self.detach()

    def wait(self, timeout: float) -> bool:
        if self._conn is None:
            return self._sleep(timeout)
        return super().wait(timeout)


class _PollingListener(Listener):
    """A listener for a database without notifications: reads a number that
    moves when others commit (``_value``) every ``poll`` seconds, on a
    driver connection of its own."""

    def __init__(self, engine: Engine, queues: Iterable[str], poll: float) -> None:
        super().__init__(queues)
        self._engine = engine
        self._poll = poll
        self._conn: Any = None
        # The baseline now, before the caller's first claim: read at the
        # first wait instead, it could already include a row enqueued after
        # that claim looked, and the wait would never see it change.
        self._last: int | None = self._read()

    def _open(self) -> Any:
        raw = self._engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()  # ours alone: never back in the pool
        return conn

    def _value(self, conn: Any) -> int:
        raise NotImplementedError

    def _read(self) -> int | None:
        try:
            if self._conn is None:
                self._conn = self._open()
            return self._value(self._conn)
        except Exception as exc:
            logger.warning("Cannot poll the database for changes (%s).", _first_line(exc))
            self._drop()
            return None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._last is None:
            self._last = self._read()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._sleep(min(self._poll, remaining)):
                return True
            last = self._read()
            if last is None or last != self._last:
                self._last = last
                return True

    def close(self) -> None:
        self._drop()
        super().close()


class SqliteListener(_PollingListener):
    """Polls ``PRAGMA data_version``: it changes when another connection commits."""

    def __init__(self, engine: Engine, queues: Iterable[str], poll: float = SQLITE_POLL) -> None:
        super().__init__(engine, queues, poll)

    def _value(self, conn: Any) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])


class MysqlListener(_PollingListener):
    """Polls ``SELECT MAX(id) FROM jobtable_request``: it moves on every enqueue."""

    def __init__(self, engine: Engine, queues: Iterable[str], poll: float = MYSQL_POLL) -> None:
        super().__init__(engine, queues, poll)

    def _open(self) -> Any:
        conn = super()._open()
        conn.autocommit(True)  # each read sees the latest commit
        return conn

    def _value(self, conn: Any) -> int:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT MAX(id) FROM jobtable_request")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return int(row[0] or 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
