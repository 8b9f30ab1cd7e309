# mypy: disallow-untyped-calls=False
"""The Kombu transport: ``jobtable+postgresql+psycopg://...`` and
``jobtable+sqlite:///...`` broker URLs.

Laid out like Kombu's Redis transport: this Transport owns what is shared by
a connection's channels (engine, options, binding cache, lease keeper, the
wake-up waiter) and runs the consume loop; ``channel.py`` has the message
operations.  Channels and the lease keeper see it as ``protocol.TransportAPI``.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from queue import Empty
from threading import Lock
from time import monotonic
from typing import Any

from kombu.transport import virtual
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ..db import engine as db_engine
from ..db import retry as db_retry
from ..db import claims_sql, clock, enqueue_sql, revokes_sql, single_insert, tables, transport_sql
from ..exceptions import DatabaseUnavailable
from . import brokerurl
from .acks import AckBuffer
from .channel import Channel
from .exchange import BindingCache
from .leases import LeaseKeeper
from .liveness import LOCK_MARK
from .options import TransportOptions, connect_of
from .outage import OutageGrace
from .protocol import row_id
from .started import connect_signals
from .wakeup import Waiter, make_waiter

logger = logging.getLogger(__name__)

#: Under Celery's event loop, claim a partly free prefetch window after this
#: long at the latest (seconds; see Transport.refill_now).
REFILL_AFTER = 0.005


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        DatabaseUnavailable,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.DisconnectionError,
        sqlite3.OperationalError,
    ]
    try:
        import psycopg

        errors.append(psycopg.OperationalError)
    except ImportError:  # pragma: no cover - SQLite-only installs
        pass
    return tuple(errors)


class Transport(virtual.Transport):
    Channel = Channel

    #: Not "sql": Celery turns task events off for that driver type.
    driver_type = "jobtable"
    driver_name = "jobtable"
    #: Kombu must not take a database URL apart with its AMQP rules, and
    #: Connection.as_uri() must ask this class (as_uri below).  The fields
    #: are set by brokerurl.adopt instead.
    can_parse_url = True
    default_port = None

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    #: Kombu and Celery reconnect on these (e.g. PostgreSQL restarting).
    # (Kombu annotates these as one-element tuples.)
    connection_errors = virtual.Transport.connection_errors + _connection_errors()
    # Bugs (ProgrammingError, DataError, IntegrityError) are not retried.
    channel_errors = virtual.Transport.channel_errors + (sa_exc.InternalError,)  # type: ignore[assignment]

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        # As early as can be: prefork children forked after this record the
        # tasks they start (started.py); nothing happens without Celery.
        connect_signals()
        self.options = TransportOptions.from_mapping(client.transport_options)
        # A bad URL fails here, clearly; the client's fields lose the URL.
        self.url = brokerurl.adopt(client)
        self.db_url = self.url.render_as_string(hide_password=False)
        # The connect timeout and SSL options of the Kombu connection
        # (broker_connection_timeout, broker_use_ssl), for the engine.
        self.connect = connect_of(self.url, client, self.options)
        self.bindings = BindingCache(self.read_connection, self.options.binding_cache_seconds)
        # The mark tells peers that this consumer holds its liveness lock
        # (transport/liveness.py): PostgreSQL with LISTEN, i.e. not behind
        # PgBouncer in transaction mode.
        listens = self.url.get_backend_name() == "postgresql"
        # Behind a transaction pooler (database_pooler) the lock session is
        # the direct URL's; without one, no lock.
        locks = self.options.wakeups and listens and db_engine.has_session(self.url)
        self._token = (LOCK_MARK if locks else "") + uuid.uuid4().hex[:12]
        self._keeper = LeaseKeeper(self)
        self._waiter: Waiter | None = None
        self._waiter_pid = 0
        self._waiter_lock = Lock()
        self._promote_lock = Lock()
        self._next_promote = 0.0
        #: x-message-ttl (seconds) of queues declared through this connection.
        self.queue_ttl: dict[str, float] = {}
        #: Bumped when this process promotes due messages (their NOTIFY comes
        #: back later: the mark changes at once).
        self._promotions = 0
        #: Acked row ids waiting for their (batched) DELETE.
        self.acks = AckBuffer(self._delete_acked)
        #: Consumers keep their channel through a brief outage (outage.py).
        self.outage = OutageGrace(self.options.outage_grace_seconds)
        #: (task_id, queue, attempt) of publishes whose commit outcome is unknown.
        self._uncertain_publishes: set[tuple[str, str, int]] = set()
        # With LISTEN/NOTIFY there is a file descriptor to watch, so Celery
        # can run its event loop (asynloop, the prefork AsynPool without pool
        # threads) on this transport: see register_with_event_loop.  Celery
        # reads this before connecting, hence per instance, from the URL.
        if self.options.event_loop and self.options.wakeups and listens:
            self.implements = type(self).implements.extend(asynchronous=True)
        self._hub: Any = None
        self._watched: list[int] = []
        self._promote_timer: Any = None
        self._refill_timer: Any = None

    # -- the URL -----------------------------------------------------------------------------

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # Not virtual's {"hostname": "localhost"}: a SQLite URL has no host.
        return {}

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        """Connection.as_uri() (the worker banner, ``repr(connection)``,
        Celery's censored ``broker_url``): rebuilt from the fields."""
        return brokerurl.as_uri(self.url, include_password, mask)

    # -- database -------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        # Looked up on each use: a forked child gets its own engine.
        return db_engine.get_engine(self.db_url, self.connect)

    @property
    def consumer_id(self) -> str:
        """Recorded in ``worker_id`` of the rows this process claims.

        Cached per pid (it is read on every ack); the pid in it keeps a forked
        child from acking its parent's messages.
        """
        pid = os.getpid()
        cached = self.__dict__.get("_consumer_id")
        if cached is None or cached[0] != pid:
            cached = (pid, f"kombu:{socket.gethostname()}:{pid}:{self._token}")
            self.__dict__["_consumer_id"] = cached
        return cached[1]

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """Autocommit statements on PostgreSQL; a BEGIN IMMEDIATE
        transaction on SQLite."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                with conn.begin():
                    yield conn

    @property
    def async_commit(self) -> bool:
        """Claims, acks and requeues commit without waiting for the WAL
        flush (see ``transport_sql._sync_commit_off``); publishes stay durable."""
        return self.options.async_commit

    def insert_published(self, rows: Sequence[dict[str, Any]], revokes: Sequence[tuple[str, str, Any]] = ()) -> None:
        """Insert published rows; once more on a fresh connection when the
        pooled one was dead (a database restart), skipping the rows the
        first attempt may have committed (see ``db/retry.py``).  Kombu's own
        ``ensure`` retry of a failed publish goes through here again: rows
        whose outcome stayed unknown are checked first then too."""
        keys = [(row["task_id"], row["queue"], int(row.get("attempt") or 1)) for row in rows]
        uncertain = self._uncertain_publishes

        def write(conn: Connection, retrying: bool) -> None:
            todo = list(rows)
            if retrying or (uncertain and any(key in uncertain for key in keys)):
                written = enqueue_sql.written_messages(conn, keys)
                todo = [row for row, key in zip(rows, keys) if key not in written]
            if revokes:
                # A Celery revoke broadcast: recorded with it (one transaction).
                revokes_sql.add(conn, revokes, clock.utcnow())
            if todo:
                if handover:
                    enqueue_sql.hand_over_held_attempts(conn, todo)
                enqueue_sql.insert_requests(conn, todo)

        # A keyed retry replaces its held attempt in one transaction (no
        # autocommit: the key must not be free between the two statements).
        handover = any(enqueue_sql.is_keyed_retry(row) for row in rows)
        try:
            if (
                len(rows) == 1 and not revokes and not handover and not (uncertain and keys[0] in uncertain)
                and single_insert.fits(rows[0]) and single_insert.usable(self.engine)
            ):
                # The common publish (one message, one queue): one prepared
                # autocommit statement on a pooled connection, as the Job
                # API's single enqueue (db/single_insert.py).
                self._insert_one(rows[0], write)
            else:
                db_retry.write_retrying(self.engine, write, autocommit=not (revokes or handover), check=False)
        except sa_exc.DBAPIError as exc:
            if db_retry.is_disconnect(exc):
                if len(uncertain) > 10_000:
                    uncertain.clear()
                uncertain.update(keys)
            raise
        if uncertain:
            uncertain.difference_update(keys)

    def _insert_one(self, row: dict[str, Any], write: Callable[[Connection, bool], None]) -> None:
        try:
            single_insert.insert(self.engine, row)
        except sa_exc.DBAPIError as exc:
            if not db_retry.is_disconnect(exc):
                raise
            db_retry.log_retry(exc)
            db_retry.write_retrying(self.engine, write, check=False, retried=True)

    def _delete_acked(self, ids: Sequence[int]) -> None:
        with self.write_connection() as conn:
            transport_sql.transport_delete(conn, ids, self.consumer_id, self.async_commit)

    def read_connection(self) -> Connection:
        # Reads must not take SQLite's write lock.
        return self.engine.connect().execution_options(sqlite_begin="DEFERRED")

    def establish_connection(self) -> Any:
        engine = self.engine
        db_engine.check_schema(engine)  # DatabaseUnavailable, or SchemaNotMigrated (fatal)
        db_engine.ping(engine)
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)  # channels requeue their unacked messages
        finally:
            try:
                self.acks.close()
            except Exception as exc:  # the leases bring those messages back
                logger.warning("jobtable: could not write the last acks: %s", exc)
            self._keeper.stop()
            if self._hub is not None:
                self._unwatch(self._hub)
                self._hub = None
            waiter, self._waiter = self._waiter, None
            if waiter is not None and self._waiter_pid == os.getpid():
                waiter.close()

    # -- consuming --------------------------------------------------------------------------

    def consuming(self) -> None:
        """A channel of this connection consumes: keep its leases alive."""
        self._keeper.start()

    def held_tags(self) -> set[str]:
        """Delivery tags of the messages this connection's channels hold
        (delivered, not acked): callable from the lease thread."""
        tags: set[str] = set()
        for channel in list(self.channels):
            qos = channel._qos
            if qos is not None:
                tags.update(str(tag) for tag in qos.held_tags())
        return tags

    def held_row_ids(self) -> list[int]:
        return sorted({row_id(tag) for tag in self.held_tags()})

    def active_queues(self) -> list[str]:
        """The queues this connection's channels consume, sorted."""
        return sorted({q for channel in list(self.channels) for q in channel._active_queues})

    @property
    def waiter(self) -> Waiter:
        if self._waiter is None or self._waiter_pid != os.getpid():
            with self._waiter_lock:
                if self._waiter is None or self._waiter_pid != os.getpid():
                    self._waiter = make_waiter(self.engine, self.options.wakeups, self.bindings.invalidate)
                    self._waiter_pid = os.getpid()
        return self._waiter

    def mark(self, queues: Sequence[str]) -> object | None:
        """Changes when messages may have been added to ``queues`` (None:
        cannot tell, look every time).  See Channel._get_many."""
        waiter_mark = self.waiter.mark(queues)
        return None if waiter_mark is None else (self._promotions, waiter_mark)

    def wake(self) -> None:
        if self._waiter is not None and self._waiter_pid == os.getpid():
            self._waiter.wake()

    def published(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows were inserted by this process: wake a local consumer, and
        promote scheduled ones as soon as they are due."""
        due: datetime | None = None
        for row in rows:
            if row["state"] == tables.SCHEDULED:
                due = row["run_at"] if due is None else min(due, row["run_at"])
        if due is not None:
            delay = (due - clock.utcnow()).total_seconds()
            self._next_promote = min(self._next_promote, monotonic() + max(delay, 0.0))
        else:
            self.wake()

    def before_claim(self) -> None:
        """Turn due scheduled messages into ready ones, at most every
        ``eta_interval`` (sooner when this process knows one is due)."""
        if monotonic() < self._next_promote or not self._promote_lock.acquire(blocking=False):
            return
        try:
            with self.write_connection() as conn:
                now = clock.utcnow()
                if claims_sql.promote_due(conn, now):
                    self._promotions += 1
                next_due = claims_sql.next_due_at(conn)
            wait = self.options.eta_interval
            if next_due is not None:
                wait = min(wait, max((next_due - clock.utcnow()).total_seconds(), 0.0))
            self._next_promote = monotonic() + wait
        finally:
            self._promote_lock.release()

    # -- Celery's event loop ---------------------------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Consume from Celery's hub instead of a blocking drain_events: the
        hub watches the wake-up fds (NOTIFY socket, the wake pipe that acks
        and local publishes write to) and a timer covers ETAs and missed
        wake-ups; each event claims what QoS allows, from the hub's thread."""
        self._hub = loop
        self._watch(loop)
        loop.call_repeatedly(min(self._poll_interval(), self.options.eta_interval), self._on_event, loop)
        loop.call_soon(self._on_event, loop)

    def unregister_from_event_loop(self, connection: Any, loop: Any) -> None:
        self._unwatch(loop)
        self._hub = None

    def _watch(self, loop: Any) -> None:
        fds = self.waiter.fds()
        if fds != self._watched:
            self._unwatch(loop)
            for fd in fds:
                loop.add_reader(fd, self._on_event, loop)
            self._watched = fds

    def _unwatch(self, loop: Any) -> None:
        for fd in self._watched:
            try:
                loop.remove_reader(fd)
            except Exception:  # already gone with a closed poller
                pass
        self._watched = []

    def _on_event(self, loop: Any) -> None:
        if self._hub is not loop:
            return  # a callback left over from before a reconnect
        self.waiter.clear()
        self._watch(loop)  # the LISTEN connection may have been replaced
        self._drain_nowait(loop)

    def _drain_nowait(self, loop: Any) -> None:
        assert self.cycle is not None
        for _ in range(len(self.channels) + 1):
            try:
                self.cycle.get(self._deliver, timeout=0)
                self.outage.ok()
            except Empty:
                self.outage.ok()
                break
            except self.connection_errors as exc:
                pause = self.outage.pause_after(exc)
                if pause is None:
                    raise
                # Riding out an outage: the hub's timer would look again only
                # after the polling interval.
                loop.call_later(pause, self._on_event, loop)
                return
        else:
            # More may be ready: let the loop run the pool in between.
            loop.call_soon(self._drain_nowait, loop)
        delay = self._next_promote - monotonic()
        if 0 < delay < self.options.eta_interval and self._promote_timer is None:
            # A countdown published here comes due before the next tick.
            def promote() -> None:
                self._promote_timer = None
                self._on_event(loop)

            self._promote_timer = loop.call_later(delay, promote)

    def refill_now(self, channel: Any, room: int) -> bool:
        """Under Celery's event loop, whether to claim ``room`` more messages
        now.  A claim blocks the loop for a round trip, and each ack frees one
        place: refilled one by one, the loop would spend its time claiming.
        So while the channel still holds enough work, wait until half the
        prefetch window is free -- or REFILL_AFTER has passed, so that long
        acks_late tasks still get their idle neighbours fed."""
        if self._hub is None:
            return True  # drain_events: the pool blocks the loop anyway
        qos = channel.qos
        prefetch = qos.prefetch_count or 0
        held = prefetch - room
        if held <= 0 or room * 2 >= prefetch:
            return True
        wait = channel.last_claim + REFILL_AFTER - monotonic()
        if wait <= 0:
            return True
        if self._refill_timer is None:
            hub = self._hub

            def refill() -> None:
                self._refill_timer = None
                self._on_event(hub)

            self._refill_timer = hub.call_later(wait, refill)
        return False

    def _poll_interval(self) -> float:
        listens = self._waiter is not None and self._waiter.listens
        return self.options.polling_interval if listens else self.options.fallback_polling_interval

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver what is ready, else wait for a wake-up (a NOTIFY, a local
        publish), the next due ETA, or the polling interval."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            assert self.cycle is not None
            pause = None
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                self.outage.ok()
                return
            except Empty:
                self.outage.ok()
            except self.connection_errors as exc:
                pause = self.outage.pause_after(exc)
                if pause is None:
                    raise
            now = monotonic()
            wait = self._poll_interval() if pause is None else pause
            if self._next_promote > now:
                wait = min(wait, self._next_promote - now)
            if deadline is not None:
                if now >= deadline:
                    raise socket.timeout()
                wait = min(wait, deadline - now)
            self.waiter.wait(self.active_queues(), wait)

