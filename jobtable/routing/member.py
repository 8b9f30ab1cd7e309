"""A worker member whose jobs come from a routed queue in RabbitMQ (issue 18).

It has the table member's shape (``worker/process.Member``: ``run``,
``standby``, ``listener.interrupt``), so the supervisor forks, heartbeats,
times out and replaces it the same way, and the same ``Executor`` runs each
attempt: middleware, timeouts, retries, ``DeferJob``, dead letters
(``badrows`` decides what an undecodable message becomes).

Where the table member claims rows, this one receives Kombu deliveries:

- prefetch is the member's batch, adapted as the table member's is (about
  50 ms of work, between 1 and ``max_pending_per_process``), so slow jobs
  are not hoarded by one member while others idle;
- results (and retries, which go to the table's scheduled rows, published
  by the relay when due) are written in batches, then the batch's
  deliveries are acked with one ``basic_ack(multiple=True)``: acked only
  after their results are committed.  A member killed before the ack has
  its messages redelivered by RabbitMQ; a redelivered attempt whose result
  is already written (or recorded by the supervisor, below) is acked
  without running again.
- a routed job that keeps a key row (``db/routed_sql.py``) has it deleted
  in the same transaction as its result.

- before a job runs, its queue and message go to the routed part of the
  member's ledger (worker/routed_ledger.py, memory writes), and how it
  ended once it returns; emptied once the batch's results are committed.
  A member that dies has its started jobs recorded by its supervisor
  (routing/lost.py: LOST and retried, or QUARANTINED, as the table's) before
  the broker redelivers them (the supervisor holds the member's broker
  socket until then), so the redelivery finds them recorded; jobs only
  prefetched are redelivered unrecorded, and run once.

Row ids are negative (a per-member counter), so they never name a table
row (the supervisor's cancel marks and slots take ids).
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import kombu as _kombu

from .. import badrows, message_checks, messages, safetext
from ..db import clock, finish_sql, refusals, routed_sql, tables
from ..db import engine as db_engine
from ..db.notify import Listener
from ..middleware import build_chain
from ..settings import get_settings
from ..worker.config import WorkerConfig
from ..worker.execute import Executor
from ..worker.ledger import Ledger
from ..worker.process import EXIT_BURST_DONE, EXIT_STOPPED, Member
from ..worker.slots import Slot
from . import publish, routes
from .revoked import REVOKED_STATUS, RevokeCheck, revoked_fields

logger = logging.getLogger("jobtable.worker")
kombu: Any = _kombu  # no type hints in Kombu

#: As the table member (worker/process.py): write finished results before
#: the next job when the last took this long, or the oldest waited this long.
FLUSH_AFTER = 0.02
FLUSH_LATEST = 0.25
#: With finished results unwritten and nothing received, how long to wait
#: for more deliveries before writing them (one batch instead of many).
GATHER_WAIT = 0.002
#: Seconds of work a prefetch window holds (the batch adapts to it).
WINDOW_SECONDS = 0.05
#: How long an idle member waits on the broker before looking at its stop flag.
IDLE_WAIT = 0.25


def _now() -> datetime:
    return clock.utcnow()


@dataclass
class _Done:
    outcome: finish_sql.Outcome | None  # None: already recorded (a redelivery), ack only
    tag: int
    generation: int


class RoutedMember:
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
        self.should_stop = should_stop
        self.ledger = ledger
        routes_now = get_settings().broker_routes
        self.url = routes_now[config.queues[0]]
        self.queues = list(config.queues)
        # Only interrupt() and close() are used: a stop is seen within IDLE_WAIT.
        self.listener = Listener(self.queues)
        self.engine = db_engine.get_engine()
        self.executor = Executor(
            worker_id=worker_id,
            chain=build_chain(config.middleware),
            timer=timer,
            slot=slot,
            default_timeout=config.timeout,
            max_return_bytes=get_settings().max_message_size,
        )
        self.batch = min(4, config.max_pending_per_process)
        self.conn: Any = None
        self.channel: Any = None
        self.consumer: Any = None
        self.generation = 0
        self.inbox: deque[tuple[Any, int]] = deque()  # (kombu message, generation)
        self.revokes = RevokeCheck()
        self.done: list[_Done] = []
        self.done_since = 0.0
        self.next_id = 0
        self.jobs_run = 0
        self.failures = 0
        self.job_seconds = 0.0
        self.job_count = 0

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        if self.slot.batch > 0:
            self.batch = max(1, min(self.config.max_pending_per_process, self.slot.batch))
        self.slot.batch = self.batch
        logger.info(
            "Worker %s consuming %s from %s", self.worker_id, ", ".join(self.queues), routes.display(self.url)
        )
        try:
            return self._loop()
        finally:
            self._shutdown()

    def standby(self, go: int) -> bool:
        """A spare (see worker/main.py): wait for the supervisor's word."""
        while not self.should_stop():
            try:
                ready, _, _ = select.select([go], [], [], IDLE_WAIT)
            except InterruptedError:  # pragma: no cover
                continue
            if ready:
                try:
                    return bool(os.read(go, 1))
                except OSError:
                    return False
        return False

    def _loop(self) -> int:
        cfg = self.config
        while not self.should_stop():
            if cfg.max_jobs_per_process and self.jobs_run >= cfg.max_jobs_per_process:
                self._flush_quietly()
                if not self.done:
                    logger.info("Worker %s ran %d jobs; replacing it.", self.worker_id, self.jobs_run)
                    return EXIT_STOPPED
            try:
                self._consume()
                if not self.inbox:
                    if self.done:
                        if len(self.done) < self.batch and time.perf_counter() - self.done_since < FLUSH_LATEST:
                            # The broker sends more while the window has room:
                            # a moment's wait makes one result batch of many.
                            self._drain(GATHER_WAIT)
                            if self.inbox:
                                continue
                        self._flush()  # nothing else to run: results (and acks) now
                        continue
                    if cfg.burst:
                        self._drain(IDLE_WAIT)
                        if not self.inbox:
                            return EXIT_BURST_DONE
                        continue
                    self._drain(IDLE_WAIT)
                    continue
                # Before any delivery leaves the inbox: a database error
                # here leaves every one of them where it is.
                self.revokes.check(self.engine, self.inbox, _now())
                message, generation = self.inbox.popleft()
                last = self._run_one(message, generation)
                if self.done and (
                    last > FLUSH_AFTER
                    or time.perf_counter() - self.done_since > FLUSH_LATEST
                    or len(self.done) >= self.batch
                ):
                    self._flush()
            except self._broker_errors() as exc:
                self._broker_lost(exc)
            except db_engine.ERRORS as exc:
                self._database_error(exc)
        return EXIT_STOPPED

    def _run_one(self, message: Any, generation: int) -> float:
        self.next_id -= 1
        started = time.perf_counter()
        row, bad = self._row_of(message, self.next_id)
        revoked = self.revokes.pop(message, generation)
        outcome: finish_sql.Outcome | None
        if bad is None and revoked is not None:
            logger.info("%s %s was revoked (%s); not run.", row.task_name, row.task_id, revoked)
            outcome = finish_sql.Outcome(row, REVOKED_STATUS, _now(), revoked_fields())
        elif bad is not None:
            logger.error("Routed message %s on %s DEAD_LETTER: %s", row.task_id, row.queue, bad)
            fields = badrows.dead_letter_fields(bad)
            fields["started_at"] = _now()
            outcome = finish_sql.Outcome(row, tables.DEAD_LETTER, _now(), fields)
        elif (message.delivery_info or {}).get("redelivered") and self._recorded(row):
            logger.info("%s %s attempt %s was redelivered after its result was written; not run again.",
                        row.task_name, row.task_id, row.attempt)
            outcome = None
        else:
            routed = self.ledger.routed if self.ledger is not None else None
            # In the ledger before any of its code runs: should the job kill
            # this process, the supervisor records the attempt (routing/lost.py).
            if routed is not None and not routed.start(row.queue, row.message, time.time()):
                # Full of finished jobs: write them first, then this one.
                self.inbox.appendleft((message, generation))
                self._flush()
                return 0.0
            outcome = self.executor.run(row)
            if routed is not None:
                routed.done(outcome.status, outcome.retry_at is not None)
            self.jobs_run += 1
        elapsed = time.perf_counter() - started
        if not self.done:
            self.done_since = time.perf_counter()
        self.done.append(_Done(outcome, message.delivery_tag, generation))
        self._adapt(elapsed)
        return elapsed

    def _adapt(self, elapsed: float) -> None:
        """The prefetch window: about WINDOW_SECONDS of work (a moving average)."""
        self.job_seconds = elapsed if not self.job_count else 0.8 * self.job_seconds + 0.2 * elapsed
        self.job_count += 1
        if self.job_count % 16:
            return
        wanted = int(WINDOW_SECONDS / max(self.job_seconds, 1e-5))
        wanted = max(1, min(self.config.max_pending_per_process, wanted))
        if wanted >= self.batch * 2 or wanted * 2 <= self.batch:
            self.batch = wanted
            self.slot.batch = wanted
            if self.channel is not None:
                self.channel.basic_qos(0, self.batch, False)

    # -- messages -> rows -----------------------------------------------------------

    def _row_of(self, message: Any, row_id: int) -> tuple[Any, str | None]:
        return row_of(message, self.queues, self.worker_id, row_id, _now())

    def _recorded(self, row: Any) -> bool:
        with db_engine.connect(self.engine) as conn, conn.begin():
            return (row.task_id, row.attempt) in routed_sql.recorded(conn, [(row.task_id, row.attempt)])

    # -- results and acks --------------------------------------------------------------

    def _flush(self) -> None:
        if not self.done:
            return
        outcomes = [d.outcome for d in self.done if d.outcome is not None]
        if outcomes:
            self._write(outcomes)
        if self.ledger is not None and self.ledger.routed is not None:
            self.ledger.routed.flushed()
        self._ack(self.done)
        self.done = []
        self.failures = 0

    def _write(self, outcomes: list[finish_sql.Outcome]) -> None:
        keys = [
            (o.row.task_id, o.row.attempt) for o in outcomes if routed_sql.keeps_key(o.row.concurrency_key, o.row.message)
        ]
        now = _now()
        try:
            with db_engine.connect(self.engine) as conn, conn.begin():
                # Key rows first: a retry inserted below takes the same key.
                routed_sql.release_keys(conn, keys)
                finish_sql.write_outcomes(conn, outcomes, now)
        except Exception as exc:
            if not refusals.is_refusal(exc):
                raise
            logger.warning("Worker %s: the database refused a batch of %d result(s) (%s); writing them one by one.",
                           self.worker_id, len(outcomes), refusals.describe(exc))
            for outcome in outcomes:
                self._write_one(outcome, now)

    def _write_one(self, outcome: finish_sql.Outcome, now: datetime) -> None:
        keys = [(outcome.row.task_id, outcome.row.attempt)]
        for candidate in (outcome, refusals.refused_outcome(outcome, "the database refused it")):
            try:
                with db_engine.connect(self.engine) as conn, conn.begin():
                    routed_sql.release_keys(conn, keys)
                    finish_sql.write_outcomes(conn, [candidate], now)
                return
            except Exception as exc:
                if not refusals.is_refusal(exc):
                    raise
        logger.error("Worker %s: the result of %s %s could not be written at all; acking it anyway.",
                     self.worker_id, outcome.row.task_name, outcome.row.task_id)

    def _ack(self, done: list[_Done]) -> None:
        # Deliveries of an earlier connection cannot be acked: the broker
        # redelivers them, and they are then found recorded.
        tags = [d.tag for d in done if d.generation == self.generation]
        if tags and self.channel is not None:
            # Deliveries are run in order, and every earlier one is in this
            # batch or an earlier one: one ack covers them.
            self.channel.basic_ack(max(tags), multiple=True)

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except self._broker_errors() as exc:
            self._broker_lost(exc)
        except db_engine.ERRORS as exc:
            self._database_error(exc)

    # -- the broker ---------------------------------------------------------------------

    def _broker_errors(self) -> tuple[type[BaseException], ...]:
        conn = self.conn or publish.connection_for(self.url)
        return tuple(conn.connection_errors) + tuple(conn.channel_errors)

    def _consume(self) -> None:
        if self.consumer is not None:
            return
        self.conn = kombu.Connection(self.url, connect_timeout=float(get_settings().connect_timeout), heartbeat=0)
        self.conn.connect()
        if self.ledger is not None and self.ledger.routed is not None:
            # The supervisor holds a copy until our end is recorded (routed_ledger.py).
            sock = getattr(getattr(self.conn, "connection", None), "sock", None)
            if sock is not None:
                self.ledger.routed.hand_socket(sock)
        self.channel = self.conn.channel()
        self.generation += 1
        generation = self.generation
        queues = [publish.routed_queue(name) for name in self.queues]
        # Per consumer (global=False): quorum queues refuse a global prefetch.
        self.channel.basic_qos(0, self.batch, False)
        self.consumer = kombu.Consumer(
            self.channel,
            queues=queues,
            on_message=lambda message: self.inbox.append((message, generation)),
            prefetch_count=self.batch,
            no_ack=False,
        )
        self.consumer.consume()
        if self.failures:
            logger.info("Worker %s: connected to %s again.", self.worker_id, routes.display(self.url))

    def _drain(self, timeout: float) -> None:
        """Take what the broker sent (a message is several frames: read until
        nothing more comes within ``timeout``, at least once)."""
        assert self.conn is not None
        wait = timeout
        while True:
            try:
                self.conn.drain_events(timeout=max(wait, 0.0005))
            except socket.timeout:
                return
            wait = 0.0

    def _broker_lost(self, exc: BaseException) -> None:
        self.failures += 1
        delay = min(5.0, 0.05 * 2 ** min(self.failures, 7)) * (0.5 + random.random() / 2)
        logger.warning("Worker %s: broker connection to %s lost (%s: %s); reconnecting in %.2fs.",
                       self.worker_id, routes.display(self.url), type(exc).__name__, _first_line(exc), delay)
        self._close_broker()
        self.inbox.clear()  # unacked: the broker delivers them again
        self.revokes.forget()
        try:
            self._flush()  # results of what ran are written; their acks are lost
        except db_engine.ERRORS as db_exc:
            self._database_error(db_exc)
        except Exception:
            logger.exception("Worker %s could not write results after losing the broker.", self.worker_id)
        if not self.should_stop():
            self.listener.wait(delay)

    def _close_broker(self) -> None:
        conn, self.conn, self.channel, self.consumer = self.conn, None, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                pass
            if self.ledger is not None and self.ledger.routed is not None:
                self.ledger.routed.drop_socket()

    def _database_error(self, exc: Exception) -> None:
        self.failures += 1
        delay = min(5.0, 0.05 * 2 ** min(self.failures, 7)) * (0.5 + random.random() / 2)
        logger.warning("Worker %s: database error (%s); retrying in %.2fs.",
                       self.worker_id, _first_line(getattr(exc, "orig", None) or exc), delay)
        self.listener.wait(min(delay, 0.2) if self.should_stop() else delay)

    def _shutdown(self) -> None:
        for _ in range(5):
            try:
                self._flush()
                break
            except self._broker_errors():
                break  # unacked deliveries come back; their results are written
            except db_engine.ERRORS as exc:
                self._database_error(exc)
            except Exception:
                logger.exception("Worker %s could not write its last results.", self.worker_id)
                break
        # Closing the channel hands back what was prefetched and not run.
        self._close_broker()
        self.listener.close()


def member_class(config: WorkerConfig) -> type:
    """The member a worker consuming ``config.queues`` forks: this one for
    routed queues, the table's otherwise (``routes.for_worker`` refused a mix)."""
    return RoutedMember if routes.for_worker(config.queues, get_settings().broker_routes) else Member


def row_of(message: Any, queues: list[str], worker_id: str, row_id: int, now: datetime) -> tuple[Any, str | None]:
    """The request-row view of a delivery (what the Executor runs) and why
    it is a dead letter when its headers cannot make a row; a bad body is
    the Executor's to find (badrows.decode_call).  Never raises."""
    queue = (message.delivery_info or {}).get("routing_key") or queues[0]
    if queue not in queues:
        queue = queues[0]
    envelope = envelope_of(message, queue)
    bad = None
    try:
        # The gate of every new message (the Kombu transport's publish
        # passes it too): column ranges, names, nesting, size.
        values = message_checks.checked_row(
            envelope, queue, now, source=f"A message of routed queue {queue!r}", clamp_priority=True,
            escape_surrogates=True,
        )
    except Exception as exc:  # noqa: BLE001 - a hostile message must not stop the member
        headers = envelope["headers"]
        shown = {**envelope, "headers": {safetext.safe_str(k, 255): safetext.safe_repr(v) for k, v in headers.items()}}
        try:
            text = messages.dumps(shown)
        except Exception:  # noqa: BLE001 - e.g. a lone surrogate in a key
            text = safetext.safe_repr(shown)
        values = _fallback_values(message, queue, now, text)
        bad = badrows.safe_text(f"The message's headers cannot make a job ({type(exc).__name__}: {exc}).")
    row = SimpleNamespace(id=row_id, worker_id=worker_id, started_at=None, lease_expires_at=None, crashes=0, **values)
    return row, bad


def envelope_of(message: Any, queue: str) -> dict[str, Any]:
    """A Kombu delivery as the stored-message envelope (messages.py)."""
    raw = message.body
    encoding = message.content_encoding or "utf-8"
    properties: dict[str, Any] = {}
    if isinstance(raw, str):
        body: str = raw
    else:
        try:
            body = bytes(raw).decode("utf-8" if encoding in ("binary", "") else encoding)
        except (UnicodeDecodeError, LookupError):
            import base64

            body = base64.b64encode(bytes(raw)).decode("ascii")
            properties["body_encoding"] = "base64"
    props = message.properties or {}
    properties.update({
        "correlation_id": props.get("correlation_id"),
        "reply_to": props.get("reply_to") or "",
        "delivery_mode": props.get("delivery_mode") or 2,
        "delivery_info": {"exchange": (message.delivery_info or {}).get("exchange") or "", "routing_key": queue},
        "priority": props.get("priority") or 0,
    })
    return {
        "body": body,
        "content-encoding": encoding,
        "content-type": message.content_type or "application/json",
        "headers": dict(message.headers or {}),
        "properties": properties,
    }


def _fallback_values(message: Any, queue: str, now: datetime, text: str) -> dict[str, Any]:
    """Columns of a dead letter whose headers could not be read."""
    props = message.properties or {}
    task_id = badrows.safe_text(props.get("correlation_id") or messages.new_task_id(), 255)
    return {
        "task_id": task_id, "task_name": "", "queue": queue, "priority": 0, "state": tables.RUNNING,
        "run_at": now, "expires_at": None, "concurrency_key": None, "unique_key": None,
        "attempt": 1, "retries": 0, "created_at": now, "message": text,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
