"""One pool member: claim a batch, run it, write the results in batches.

The loop keeps per-job work free of I/O: one transaction writes the previous
batch's results (and retries) *and* claims the next batch, so a busy member
makes one round trip per batch.  The batch size adapts: it doubles while a
batch takes under ~20 ms and halves above ~100 ms, between 1 and
``max_pending_per_process``, so fast jobs are claimed by the hundred and slow
ones are not hoarded by one member.
"""

from __future__ import annotations

import logging
import os
import random
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from ..db import engine as db_engine
from ..db import clock, claims_sql, finish_sql, ratelimit_sql, refusals
from ..db.notify import Listener
from ..middleware import build_chain
from ..settings import get_settings
from . import dispatch, rate_epoch
from .config import WorkerConfig
from .execute import Executor
from .ledger import Ledger
from .preempt import PriorityWatch
from .slots import Slot

logger = logging.getLogger("jobtable.worker")

#: Exit codes of a process member (the supervisor decides what comes next).
EXIT_STOPPED = 0  # asked to stop, or max jobs reached: replace unless stopping
EXIT_BURST_DONE = 3  # --burst and nothing left to do: do not replace

#: Write finished results before the next job of a batch when the last job
#: took this long, or when the oldest unwritten result waited FLUSH_LATEST.
FLUSH_AFTER = 0.02
FLUSH_LATEST = 0.25
#: How often a member cut off from the database looks whether a heartbeat
#: got through again (process.py ``_still_ours``).
CONTACT_POLL = 0.05
#: Batch size bounds in seconds of work.
GROW_BELOW, SHRINK_ABOVE = 0.02, 0.1

T = TypeVar("T")


def _now() -> datetime:
    # The database's clock, never this host's (db/clock.py).
    return clock.utcnow()


class Member:
    def __init__(
        self,
        config: WorkerConfig,
        worker_id: str,
        slot: Slot,
        *,
        timer: Any,
        should_stop: Callable[[], bool],
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.slot = slot
        #: Started-since-the-last-flush row ids, read by the supervisor (and
        #: by peers) if this member dies: see ledger.py.
        self.ledger = ledger or Ledger.create(worker_id, config.max_pending_per_process, file=False)
        self.should_stop = should_stop
        self.engine = db_engine.get_engine()
        # On PostgreSQL it LISTENs on self.conn (attached in _connection):
        # one backend per member -- a replaced member opens one, not two.
        self.listener = Listener.create(self.engine, config.queues, use_notify=config.listen, shared=True)
        self.watch = PriorityWatch(self.listener, config.queues)
        self.executor = Executor(
            worker_id=worker_id,
            chain=build_chain(config.middleware),
            timer=timer,
            slot=slot,
            default_timeout=config.timeout,
            # A return value larger than a message could be is not stored whole.
            max_return_bytes=get_settings().max_message_size,
        )
        self.conn: Connection | None = None
        self.done: list[finish_sql.Outcome] = []
        #: Claimed rows that found no rate limit token: (id, queue, run_at),
        #: sent back to wait with the next write (``_finish_then``).
        self.deferred: list[tuple[int, str, datetime]] = []
        #: Per rate limit key: the database's next token time last learned
        #: (no take is tried before it), and the next run_at to give a row
        #: that waits (one interval apart, so that the rows of a batch do
        #: not all come back for the same token).
        self.token_at: dict[str, datetime] = {}
        self.wait_slot: dict[str, datetime] = {}
        #: Rates set by remote control (ratelimit_sql.overrides) and when they were read (None: not yet).
        self.rate_overrides: dict[str, float] = {}
        self.overrides_read: float | None = None
        self.overrides_epoch = rate_epoch.current()
        self.current: list[Any] = []  # the batch being run
        self.done_since = 0.0
        self.batch = min(4, config.max_pending_per_process)
        self.jobs_run = 0
        self.next_due: datetime | None = None
        self.next_due_checked = 0.0
        self.failures = 0
        self.resync = False
        self.recheck_due = False
        # PostgreSQL: an autocommit connection, so that a lone claim (the
        # wake-up path) is one round trip; several statements that must be
        # atomic run inside an explicit BEGIN/COMMIT (_tx).
        self.autocommit = self.engine.dialect.name == "postgresql"

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        # A replacement starts at the batch size its predecessor had
        # reached (set by the supervisor): ramping up from a few jobs costs a
        # round trip per doubling, which a drain with a crash every few
        # hundred jobs pays again and again.
        if self.slot.batch > 0:
            self.batch = max(1, min(self.config.max_pending_per_process, self.slot.batch))
        self.slot.batch = self.batch
        logger.info("Worker %s consuming %s", self.worker_id, ", ".join(self.config.queues))
        try:
            return self._loop()
        finally:
            self._shutdown()

    def standby(self, go: int) -> bool:
        """A spare member (see main.py): connect now, then wait until the
        supervisor writes to ``go`` (True: take over a dead member's place)
        or asks to stop (False).  Notifications that arrive meanwhile are
        read and dropped, so that PostgreSQL can trim its queue.  No
        database work while waiting: a spare holds no lock, writes nothing."""
        try:
            self._connection()
        except db_engine.ERRORS as exc:
            self._database_error(exc)  # connected again on the first claim
        while not self.should_stop():
            try:
                ready, _, _ = select.select([go, *self.listener.fds()], [], [], self.config.poll_interval)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select
                continue
            if go in ready:
                try:
                    if not os.read(go, 1):
                        return False  # the supervisor is gone
                except OSError:
                    return False
                # The other members promote due jobs on their own ticks: the
                # first claim need not wait for a promotion (it comes within
                # a poll interval, as it does for any member).
                self.next_due_checked = time.monotonic()
                return True
            if ready:
                self.listener.clear()
        return False

    def _loop(self) -> int:
        cfg = self.config
        while not self.should_stop():
            limit = self.batch
            if cfg.max_jobs_per_process:
                limit = min(limit, cfg.max_jobs_per_process - self.jobs_run)
            try:
                if self._due_check_needed():
                    self._promote()
                self.watch.before_claim()
                rows = self._flush_and_claim(limit)
                if not rows and self.recheck_due:
                    # Woken with nothing to claim: maybe a job was scheduled
                    # sooner than we knew, or one just became due.
                    self.recheck_due = False
                    if self._promote():
                        rows = self._flush_and_claim(limit)
            except db_engine.ERRORS as exc:
                self._database_error(exc)
                continue
            if not rows:
                if cfg.max_jobs_per_process and self.jobs_run >= cfg.max_jobs_per_process:
                    logger.info("Worker %s ran %d jobs; replacing it.", self.worker_id, self.jobs_run)
                    return EXIT_STOPPED
                if cfg.burst:
                    return EXIT_BURST_DONE
                self._wait()
                continue
            self._run_batch(rows)
        return EXIT_STOPPED

    def _run_batch(self, rows: list[Any]) -> None:
        self.current = rows
        try:
            self._run_rows(rows)
        finally:
            self.current = []
        # Busy members never wait: read notifications anyway (a non-blocking
        # recv) so that PostgreSQL can trim its notification queue.
        self.listener.consume()

    def _run_rows(self, rows: list[Any]) -> None:
        started = time.perf_counter()
        last_job = 0.0
        for index, row in enumerate(rows):
            if self.should_stop():
                self._release_quietly([r.id for r in rows[index:]])
                return
            if index and self.watch.due() and self._outranked(row.priority):
                # A higher priority waits: give the rest back and claim anew
                # (the claim takes it first); see preempt.py.
                self._release_quietly([r.id for r in rows[index:]])
                return
            if (self.done or self.deferred) and (
                last_job > FLUSH_AFTER or time.perf_counter() - self.done_since > FLUSH_LATEST
            ):
                # Slow jobs: do not keep finished results (and concurrency
                # keys) waiting behind the next one.  Fast ones wait for the
                # end of the batch, which is near.
                self._flush_quietly()
            if not self._still_ours():
                # A rescuer took what we held while we were cut off: not
                # ours to run any more.  Rows still ours go back (guarded).
                self.slot.disowned = False
                logger.warning(
                    "Worker %s: its claimed jobs were rescued by another worker while it could not reach the "
                    "database; not starting the %d it still held.", self.worker_id, len(rows) - index,
                )
                self._release_quietly([r.id for r in rows[index:]])
                return
            try:
                waits = self._token_wait(row)
            except db_engine.ERRORS as exc:
                # Not started: the rest goes back (or, if the database stays
                # away, the supervisor gives them back when this member ends).
                self._database_error(exc)
                self._release_quietly([r.id for r in rows[index:]])
                return
            if waits is not None:
                # No token: not run, not an attempt; the member goes on with
                # the rest of its batch.
                if not self.done and not self.deferred:
                    self.done_since = time.perf_counter()
                self.deferred.append((row.id, row.queue, waits))
                last_job = 0.0
                continue
            job_started = time.perf_counter()
            # Before any of the job's code (decoding it builds the job), so
            # that a member dying from here on records it LOST, never pending.
            self.ledger.start(row.id)
            outcome = self.executor.run(row)
            self.ledger.done(retry=outcome.retry_at is not None, status=outcome.status)
            now = time.perf_counter()
            last_job = now - job_started
            if not self.done:
                self.done_since = now
            self.done.append(outcome)
            self.jobs_run += 1
        elapsed = time.perf_counter() - started
        if len(rows) >= self.batch and elapsed < GROW_BELOW:
            self.batch = min(self.config.max_pending_per_process, self.batch * 2)
            self.slot.batch = self.batch
        elif elapsed > SHRINK_ABOVE:
            self.batch = max(1, self.batch // 2)
            self.slot.batch = self.batch

    def _token_wait(self, row: Any) -> datetime | None:
        """None when ``row`` may start now (no rate limit, or its token
        taken); else the time it should wait for.  One statement per take,
        decided by the database (``ratelimit_sql.take``); none while the
        next token is known to be later."""
        rate = self._rate_of(row.task_name)
        if rate is None:
            return None
        key = row.task_name
        interval = 1.0 / rate
        now = _now()
        known = self.token_at.get(key)
        if known is None or known <= now:
            conn = self._connection()
            # In autocommit each statement of the take is its own transaction.
            known = ratelimit_sql.take_retrying(
                conn, nullcontext if self.autocommit else (lambda: self._tx(conn)), key, interval, now
            )
            if known is None:
                self.token_at.pop(key, None)
                return None
            self.token_at[key] = known
        slot = max(known, self.wait_slot.get(key, known))
        self.wait_slot[key] = slot + timedelta(seconds=interval)
        if self.next_due is None or slot < self.next_due:
            self.next_due = slot  # this member's own wait ends then
        return slot

    def _rate_of(self, name: str) -> float | None:
        """Tokens per second of ``name``: a rate set by remote control wins
        over the code's.  Read when the member starts, then again only when
        ``rate_epoch`` moved: bumped by this worker's control listener when
        it stored one, and by the supervisor's ``rates`` duty when it saw
        the stored rates change (duties.py) -- no statement here otherwise."""
        epoch = rate_epoch.current()
        if epoch != self.overrides_epoch or self.overrides_read is None:
            self.overrides_epoch = epoch
            conn = self._connection()
            with nullcontext() if self.autocommit else self._tx(conn):
                read = ratelimit_sql.overrides(conn)
            for changed in {k for k in read.keys() | self.rate_overrides.keys() if read.get(k) != self.rate_overrides.get(k)}:
                # The next token is taken again at the new rate.
                self.token_at.pop(changed, None)
                self.wait_slot.pop(changed, None)
            self.rate_overrides, self.overrides_read = read, time.monotonic()
        if name in self.rate_overrides:
            return self.rate_overrides[name] or None
        return dispatch.rate_of(name)

    def _still_ours(self) -> bool:
        """Before starting a claimed job: False when the supervisor learned
        that a rescuer took this member's claims.  While its heartbeats have
        not reached the database for ``lost_after / 2`` -- peers declare it
        lost after ``lost_after`` by the database's clock and take its rows
        -- the member waits rather than start a job it may no longer own;
        it goes on once a heartbeat lands (or stops when asked)."""
        stale_after = self.config.lost_after / 2
        waiting = False
        while not self.slot.disowned:
            contact = self.slot.contact
            if not contact or time.monotonic() - contact <= stale_after or self.should_stop():
                if waiting:
                    logger.info("Worker %s: heartbeats reach the database again; going on.", self.worker_id)
                return True
            if not waiting:
                # INFO: a supervisor slowed by a loaded machine pauses its
                # members briefly too; an unreachable database is logged as
                # a WARNING by the supervisor's failing heartbeats.
                waiting = True
                logger.info(
                    "Worker %s: no heartbeat reached the database for %g s; not starting jobs until one does.",
                    self.worker_id, stale_after,
                )
            time.sleep(CONTACT_POLL)
        return False

    # -- database steps ----------------------------------------------------------

    @contextmanager
    def _tx(self, conn: Connection) -> Iterator[None]:
        if not self.autocommit:
            with conn.begin():
                yield
            return
        conn.exec_driver_sql("BEGIN")
        try:
            yield
        except BaseException:
            try:
                conn.exec_driver_sql("ROLLBACK")
            except Exception:
                pass
            raise
        conn.exec_driver_sql("COMMIT")

    def _connection(self) -> Connection:
        if self.conn is None:
            conn = db_engine.connect(self.engine, autocommit=self.autocommit)
            try:
                # Before the first claim on it: a job enqueued after that
                # claim looked wakes the wait that follows.
                self.listener.attach(conn)
            except BaseException:
                _discard(conn)
                raise
            self.conn = conn
            if self.resync:
                # After a lost connection a claim may have committed without
                # our hearing of it: give back every row we hold but do not know.
                known = [o.row.id for o in self.done] + [row.id for row in self.current]
                known += [row_id for row_id, _queue, _run_at in self.deferred]
                with self._tx(self.conn):
                    released = finish_sql.release(self.conn, self.worker_id, None, keep=known)
                if released:
                    logger.warning("Worker %s gave back %d job(s) claimed during a disconnect.", self.worker_id, released)
                self.resync = False
        elif self.listener.wants_connection():
            # A wait found the connection failing: listen again (or fail
            # here, and reconnect through _database_error).
            self.listener.attach(self.conn)
        return self.conn

    def _flush_and_claim(self, limit: int) -> list[Any]:
        conn = self._connection()
        now = _now()
        def claim() -> list[Any]:
            if limit <= 0:
                return []
            # Claims made from here on are ours whatever a rescue took before.
            self.slot.disowned = False
            return claims_sql.claim(conn, self.config.queues, limit, worker_id=self.worker_id, now=now)

        if not self.done and not self.deferred and self.autocommit:
            rows = claim()  # a single statement is its own transaction
            self.ledger.flushed()
        else:
            rows = self._finish_then(conn, now, claim)
        self.failures = 0
        return rows

    def _finish_then(self, conn: Connection, now: datetime, then: Callable[[], T]) -> T:
        """One transaction: write the finished results (``self.done``), then
        ``then()``.  When the database refuses the batch (bad data, not a lost
        connection) the transaction is rolled back and done again with the
        results written one by one, so one refused row cannot block the
        others or make the member retry the same write forever."""
        refused: Exception | None = None
        try:
            with self._tx(conn):
                ratelimit_sql.defer(conn, self.worker_id, self.deferred)
                try:
                    finish_sql.finish(conn, self.worker_id, self.done, now)
                except Exception as exc:
                    if refusals.is_refusal(exc):
                        refused = exc
                    raise
                value = then()
        except Exception as exc:
            if refused is None or exc is not refused:
                raise
            logger.warning(
                "Worker %s: the database refused a batch of %d result(s) (%s); writing them one by one.",
                self.worker_id,
                len(self.done),
                refusals.describe(exc),
            )
            with self._tx(conn):
                ratelimit_sql.defer(conn, self.worker_id, self.deferred)
                refusals.finish_each(conn, self.worker_id, self.done, now)
                value = then()
        self.done = []
        self.deferred = []
        self.ledger.flushed()
        return value

    def _flush_quietly(self) -> None:
        try:
            conn = self._connection()
            self._finish_then(conn, _now(), lambda: None)
        except db_engine.ERRORS as exc:
            self._database_error(exc)

    def _release_quietly(self, ids: list[int]) -> None:
        try:
            conn = self._connection()
            released = self._finish_then(conn, _now(), lambda: finish_sql.release(conn, self.worker_id, ids))
            if released:
                logger.info("Worker %s gave back %d job(s) it had not started.", self.worker_id, released)
        except db_engine.ERRORS as exc:
            # The supervisor gives them back when this process ends.
            self._database_error(exc)

    def _outranked(self, priority: int) -> bool:
        try:
            conn = self._connection()
            with self._tx(conn):
                return self.watch.outranked(conn, priority)
        except db_engine.ERRORS as exc:
            self._database_error(exc)
            return False

    def _due_check_needed(self) -> bool:
        if self.next_due is not None and self.next_due <= _now():
            return True
        return time.monotonic() - self.next_due_checked >= self.config.poll_interval

    def _promote(self) -> int:
        """Turn due scheduled jobs pending; remember when the next one is due."""
        conn = self._connection()
        clock.maybe_sync(conn)  # this connection is held for long: no checkouts
        with self._tx(conn):
            # Cheap when nothing is due: a range scan of the partial due index.
            promoted = claims_sql.promote_due(conn, _now())
            self.next_due = claims_sql.next_due_at(conn)
        self.next_due_checked = time.monotonic()
        return promoted

    def _wait(self) -> None:
        timeout = self.config.poll_interval
        if self.next_due is not None:
            until = (self.next_due - _now()).total_seconds()
            timeout = max(0.0, min(timeout, until + 0.001))
        if self.listener.wait(timeout):
            self.recheck_due = True

    def _database_error(self, exc: Exception) -> None:
        self.failures += 1
        delay = min(5.0, 0.05 * 2 ** min(self.failures, 7)) * (0.5 + random.random() / 2)
        logger.warning(
            "Worker %s: database error (%s); retrying in %.2fs.",
            self.worker_id,
            _first_line(getattr(exc, "orig", None) or exc),
            delay,
        )
        conn, self.conn = self.conn, None
        self.listener.detach()
        if conn is not None:
            _discard(conn)
        self.resync = True
        if self.should_stop():
            time.sleep(min(delay, 0.2))
        else:
            self.listener.wait(delay)

    def _shutdown(self) -> None:
        # Results first; then anything claimed and not started goes back --
        # but not a job that started and never returned (the member is
        # crashing out of it): the supervisor records that one LOST.
        for _ in range(5):
            try:
                conn = self._connection()
                unfinished = self.ledger.state()
                keep = unfinished.running if unfinished.complete else [row.id for row in self.current]
                self._finish_then(conn, _now(), lambda: finish_sql.release(conn, self.worker_id, None, keep=keep))
                break
            except db_engine.ERRORS as exc:
                self._database_error(exc)
            except Exception:
                logger.exception("Worker %s could not write its last results.", self.worker_id)
                break
        held, self.conn = self.conn, None
        if held is not None:
            try:
                self.listener.detach(held)  # it goes back to the pool: UNLISTEN first
                held.close()
            except Exception:
                self.listener.detach()
                _discard(held)
        self.listener.close()


def _discard(conn: Connection) -> None:
    """Close a connection that may be broken, never back into the pool."""
    try:
        conn.invalidate()
        conn.close()
    except Exception:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
