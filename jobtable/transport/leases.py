"""Crash safety for Kombu consumers: leases on claimed messages.

A claimed row carries ``lease_expires_at``.  While the consumer lives, a
background thread extends the leases of the messages it still holds
(acks_late and long tasks keep theirs); when it dies — even by kill -9 —
the renewals stop and any other live consumer puts the rows back to
pending once the lease has passed.  The same thread sweeps away waiting
messages past their expiry (queues nobody consumes any more), and keeps the
consumer's heartbeat row in ``jobtable_worker`` (kind "kombu"), so that the
dashboard lists Celery workers beside native ones.  A dead Celery
consumer's messages that it only prefetched go back without counting a crash
(its same-host ledger, ``started.py``, lists the tasks it started).

The ledger also tells what is running: every half second the thread reads
the deliveries its Celery worker's processes started since the last look and
marks those it still holds started (``started_at``) in one UPDATE -- a write
per half second at most, none per task -- so reads show them "running" and
the rest of the prefetched batch "claimed" (``db/reads_sql.started``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from time import monotonic

from sqlalchemy.engine import Connection

from ..db import clock, deadletters, leases_sql, transport_sql, workers_sql
from ..settings import get_settings
from ..db.dialects import wake_queues
from . import liveness, started
from .protocol import TransportAPI, row_id

logger = logging.getLogger(__name__)

#: Most ids per renewal statement (bound parameters stay well under limits).
RENEW_CHUNK = 500
#: Seconds between heartbeats (the dashboard calls a worker stale after
#: ``worker_lost_after``, 30 s by default).
HEARTBEAT_INTERVAL = 10.0
#: A consumer row silent this long is deleted by any live consumer.
FORGET_AFTER = timedelta(hours=1)


def _quarantine_after() -> int:
    """``worker_quarantine_after`` (default 3); the default when the
    settings of this process do not load (a Celery app configures Kombu, not
    jobtable)."""
    try:
        return max(1, int(get_settings().worker_quarantine_after))
    except Exception as exc:  # noqa: BLE001
        logger.warning("jobtable: could not read worker_quarantine_after (%s); using 3", exc)
        return 3


class LeaseKeeper:
    def __init__(self, transport: TransportAPI) -> None:
        self._transport = transport
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._liveness: liveness.ConsumerLiveness | None = None
        #: The consumer's ledger, read for newly started deliveries (Celery).
        self._tail: started.Tail | None = None
        #: Started deliveries not yet written (the database was away).
        self._unreported: set[str] = set()

    def start(self) -> None:
        """Start the thread in this process (once; again after a fork)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._pid = os.getpid()
            transport = self._transport
            if started.celery_loaded():
                # A Celery worker's consumer: its tasks' starts are recorded
                # so that a peer counts crashes only for those (started.py).
                started.create(transport.consumer_id)
                self._tail = started.Tail(transport.consumer_id)
                self._unreported = set()
            # The lock first: peers must never see this consumer's row unlocked.
            self._liveness = liveness.ConsumerLiveness(
                transport.engine, use_locks=liveness.holds_lock(transport.consumer_id)
            )
            try:
                self._liveness.hold(transport.consumer_id)
                self.heartbeat()  # listed before the first message is taken
            except Exception as exc:  # the database is down: the thread retries
                logger.warning("jobtable: consumer heartbeat failed: %s", exc)
            self._thread = threading.Thread(target=self._run, name="jobtable-kombu-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=5)
            if self._liveness is not None:
                self._liveness.close()
                self._liveness = None
            try:
                with self._transport.write_connection() as conn:
                    workers_sql.delete_workers(conn, [self._transport.consumer_id])
            except Exception as exc:  # the database is down: the row goes stale
                logger.warning("jobtable: could not remove the consumer's heartbeat row: %s", exc)
            started.remove(self._transport.consumer_id)
        self._thread = None

    def _run(self) -> None:
        options = self._transport.options
        tick = min(options.renew_interval, options.recover_every, HEARTBEAT_INTERVAL)
        next_recover = monotonic()
        next_sweep = monotonic() + options.expired_sweep_interval
        next_upkeep = monotonic() + tick
        while not self._stop.wait(min(tick, liveness.EVERY)):
            try:
                self.report_started()
                self.recover_dead()
                now = monotonic()
                if now < next_upkeep:
                    continue
                next_upkeep = now + tick
                self.heartbeat()
                self.renew()
                now = monotonic()
                if now >= next_recover:
                    next_recover = now + options.recover_every
                    self.recover()
                if now >= next_sweep:
                    next_sweep = now + options.expired_sweep_interval
                    self.sweep()
            except Exception as exc:  # the database is down: Kombu's reconnect deals with it
                logger.warning("jobtable: lease upkeep failed: %s", exc)

    def renew(self) -> int:
        transport = self._transport
        ids = transport.held_row_ids()
        if not ids:
            return 0
        until = clock.utcnow() + timedelta(seconds=transport.options.lease_seconds)
        renewed = 0
        with transport.write_connection() as conn:
            for start in range(0, len(ids), RENEW_CHUNK):
                chunk = ids[start : start + RENEW_CHUNK]
                renewed += transport_sql.transport_renew(conn, chunk, transport.consumer_id, until, transport.async_commit)
        return renewed

    def report_started(self) -> int:
        """Mark started the held messages whose tasks began since the last
        call (one UPDATE; nothing when none did).  Returns the rows marked."""
        tail = self._tail
        if tail is None:
            return 0
        self._unreported |= tail.new_tags()
        if not self._unreported:
            return 0
        transport = self._transport
        # Acked (early ack: Celery's default acks as the task starts) or
        # given back meanwhile: nothing to show, the row is gone or pending.
        tags = self._unreported & transport.held_tags()
        self._unreported = tags
        if not tags:
            return 0
        ids = sorted({row_id(tag) for tag in tags})
        marked = 0
        now = clock.utcnow()
        with transport.write_connection() as conn:
            for start in range(0, len(ids), RENEW_CHUNK):
                chunk = ids[start : start + RENEW_CHUNK]
                marked += transport_sql.transport_mark_started(
                    conn, chunk, transport.consumer_id, now, transport.async_commit
                )
        self._unreported = set()
        return marked

    def heartbeat(self) -> None:
        """Refresh this consumer's row in ``jobtable_worker``."""
        transport = self._transport
        queues = transport.active_queues()
        with transport.write_connection() as conn:
            workers_sql.register_worker(
                conn,
                transport.consumer_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=queues,
                processes=0,
                now=clock.utcnow(),
                kind="kombu",
            )

    def recover(self) -> list[str]:
        """Requeue the messages of consumers whose lease lapsed."""
        transport = self._transport
        after = _quarantine_after()
        # One "now" for both steps: with two, a lease lapsing between them
        # would be recovered without the quarantine check (and escape it).
        now = clock.utcnow()
        # One transaction: messages put back without a crash (only
        # prefetched) are claimable only with the others, in their order.
        with transport.engine.begin() as tx:
            ledgers, released = self.release_unstarted(tx, now)
            # Before the recovery: a message whose consumer died holding it
            # ``after`` times is not delivered again.
            quarantined = deadletters.quarantine_lapsed(
                tx,
                now,
                after,
                f"Quarantined: a consumer died (its lease lapsed) while holding this message {after} times; "
                "it is not delivered again. Re-queue it by hand with `jobtable retry <uuid>` or the dashboard.",
            )
            queues = sorted(set(leases_sql.transport_recover(tx, now)) | released)
            wake_queues(tx, queues)
            workers_sql.delete_stale_consumers(tx, now - FORGET_AFTER)
        if quarantined:
            logger.error(
                "jobtable: quarantined %d message(s) whose consumers died holding them %d times: %s",
                len(quarantined),
                after,
                ", ".join(f"{row.task_name or '?'} {row.task_id}" for row in quarantined)[:500],
            )
        if queues:
            logger.info("jobtable: requeued messages of a lost consumer in %s", ", ".join(queues))
            transport.wake()
        for holder in ledgers:
            if started.consumer_dead(holder):
                started.remove(holder)
        return queues

    def release_unstarted(self, tx: Connection, now: datetime) -> tuple[list[str], set[str]]:
        """Put back, without counting a crash, the lapsed messages that a
        consumer of this host only prefetched (its ledger lists the tasks it
        started: started.py).  Returns the consumers whose ledger was read
        and the queues of the messages put back."""
        read: list[str] = []
        released: list[str] = []
        if not started.any_ledger():
            return read, set()
        for holder in leases_sql.lapsed_holders(tx, now):
            ids = started.read(holder)
            if ids is None:
                continue  # no ledger here: every held message counts a crash
            read.append(holder)
            released += leases_sql.release_unstarted(tx, now, holder, ids)
        if released:
            logger.info("jobtable: %d prefetched message(s) of a lost consumer requeued (never started)", len(released))
        return read, set(released)

    def recover_dead(self) -> list[str]:
        """Requeue at once the messages of consumers known to be dead: their
        leases end now, and the usual recovery counts the crash (and
        quarantines a message whose consumers died holding it too often)."""
        keeper = self._liveness
        if keeper is None:
            return []
        transport = self._transport
        with transport.write_connection() as conn:
            held = keeper.expire(conn, transport.consumer_id)
        if not held:
            return []
        logger.info("jobtable: %d message(s) of a dead consumer are recovered at once", held)
        return self.recover()

    def sweep(self) -> int:
        with self._transport.write_connection() as conn:
            return transport_sql.transport_delete_expired(conn, clock.utcnow())
