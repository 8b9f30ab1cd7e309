"""The supervisor: starts the pool, heartbeats, rescues, restarts, stops.

Processes pool (default): N forked members, each with its own claim loop,
connection and worker id, and one spare forked ahead that takes the place of
a member that dies (see ``_spawn``).  The supervisor never touches jobs
itself: it heartbeats for its members, notices a member that died
(``SIGCHLD``, ``waitpid``) and,
from the member's ledger (``ledger.py``), records what it had started LOST
(or QUARANTINED) and gives back what it had not (a routed member's jobs:
``routing/lost.py``, before it lets the broker see the member's connection
close, ``routed_ledger.py``), kills a member stuck past
its job's timeout + grace.  What it runs on timers -- heartbeats, the
rescue of other workers that stopped heartbeating, schedule ticks, the purge
of old results and ledger files nobody needs, stats -- is ``duties.py``.
Threads pool: the same with members as threads of one process.

Signals: the first SIGTERM/SIGINT stops claiming; members give back what they
have not started and finish their running job within
``JOBTABLE_WORKER_SHUTDOWN_GRACE`` seconds (then they are killed and the job
is LOST); a second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import middleware
from ..db import engine as db_engine
from ..db import claims_sql, clock, workers_sql
from ..routing import lost, routes
from ..settings import get_settings
from . import cancels, forked, hooks
from . import ledger as ledgers
from . import rescue
from .liveness import Liveness
from .config import WorkerConfig
from .duties import Duties, make_scheduler
from .ledger import Ledger, LedgerState
from . import routed_ledger
from .routed_ledger import RoutedJob, RoutedJobs
from .process import EXIT_BURST_DONE, Member
from .slots import Slots
from .timeouts import NoTimeout, raise_in_thread

logger = logging.getLogger("jobtable.worker")

TICK = 0.05


def _now() -> datetime:
    # The database's clock, never this host's (db/clock.py).
    return clock.utcnow()


@dataclass
class Handle:
    index: int  # its place in the pool (-1: a spare not yet in use)
    worker_id: str
    slot_index: int = 0
    #: A spare's end of the pipe that tells it to start (0: not a spare).
    go: int = 0
    pid: int = 0
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    member: Any = None  # process.Member or routing.member.RoutedMember (threads pool)
    exit_code: int | None = None
    kill_reason: str = ""
    #: The kill was the operator's (shutdown grace over, second signal), not
    #: the job's: its LOST attempt does not count towards quarantine.
    operator_kill: bool = False
    timed_out_row: int = 0
    #: Killed because its cancelled job did not stop (cancels.py): that row
    #: and how it is recorded (CANCELLED, not LOST).
    cancelled_row: int = 0
    cancelled_how: int = 0
    ledger: Ledger | None = None


@dataclass
class Pending:
    """A member's end not yet written (the database was unreachable)."""

    worker_id: str
    running_id: int
    why: str
    lose_running: bool
    state: LedgerState | None = None
    why_finished: str = ""
    poison: bool = True
    ledger: Ledger | None = None
    cancelled_row: int = 0
    cancelled_how: int = 0
    #: A routed member's started jobs (its ledger's routed part) and
    #: whether every one was kept.
    routed: list[RoutedJob] = field(default_factory=list)
    routed_complete: bool = True



class Supervisor:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.hostname = socket.gethostname()
        # Processes pool: one spare member, forked and connected ahead,
        # takes a dead member's place at once (a member's start-up -- fork,
        # connections -- is then paid while the others work, not in the gap).
        # Made once a member had to be replaced (a crash, --max-jobs-per-process):
        # a pool that never loses a member holds no extra process or
        # connections.  Not in --burst (members end there when the queue is empty).
        self.use_spare = config.pool == "processes" and not config.burst
        self.spare_wanted = False
        self.slots = Slots(config.processes + (1 if self.use_spare else 0))
        self.free_slots = list(range(self.slots.count))
        self.handles: dict[int, Handle] = {}
        self.spare: Handle | None = None
        #: Spares that were told to start but had died: reaped, then recorded.
        self.orphans: dict[int, Handle] = {}
        self.spare_after = 0.0  # monotonic time before which no new spare is made
        self.finished: set[int] = set()  # --burst members that found nothing left
        self.pending: list[Pending] = []
        #: Spares that took a place and have no worker row yet: registered in
        #: the transaction that records the end of the member they replace.
        self.unregistered: list[str] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.kill_now = False
        self.exit_code = 0
        self.liveness: Liveness | None = None
        self.routed: list[str] = []
        self.cancels = cancels.Watch(config.timeout_grace)
        self.ledger_scope = ""
        #: Heartbeats, rescues, purges, schedule ticks... (duties.py).
        self.duties = Duties(self)
        # A self-pipe the loop sleeps on: SIGCHLD (a member died) and a
        # thread member's end write to it, so a death is handled at once
        # rather than on the next tick.
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    # -- entry -------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        # Refuse to start on what cannot load, before any member is forked:
        # members would fail one after the other (and --burst never end),
        # and a worker without its schedule would look healthy.
        middleware.check_all(cfg.middleware)
        # Routed queues (issue 18): members consume the broker; this
        # supervisor relays their delayed jobs, retries and key rows.
        self.routed = list(cfg.queues) if routes.for_worker(cfg.queues, get_settings().broker_routes) else []
        scheduler = make_scheduler()
        engine = db_engine.get_engine()
        db_engine.check_schema(engine)
        _preload_for_members()
        if cfg.pool == "processes":
            _warm_for_members(engine, cfg.queues)
        self.ledger_scope = ledgers.scope_of(engine.url.render_as_string(hide_password=True))
        logger.info(
            "jobtable worker %s: %d %s, queues %s, database %s",
            os.getpid(),
            cfg.processes,
            "process(es)" if cfg.pool == "processes" else "thread(s)",
            ", ".join(cfg.queues),
            db_engine.describe(engine),
        )
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        self.duties.scheduler = scheduler
        # listen off means PgBouncer in transaction mode: no session locks.
        self.liveness = Liveness(engine, use_locks=cfg.listen)
        ready = False
        try:
            self.duties.run("liveness")
            self.duties.run("rescue", rescue_first=True)
            for index in range(cfg.processes):
                self._spawn(index)
            ready = True
            hooks.fire(hooks.WORKER_READY, self.hostname)
            while True:
                self._reap()
                if not self.handles and self.spare is None and not self.orphans and (
                    self.stopping or len(self.finished) == cfg.processes
                ):
                    break
                self._keep_spare()
                self._enforce_deadlines()
                self.duties.run_due()
                self._sleep(TICK)
            self._write_pending()
        finally:
            if ready:
                hooks.fire(hooks.WORKER_STOPPED, self.hostname)
            self.liveness.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        logger.info("jobtable worker %s stopped.", os.getpid())
        return self.exit_code

    # -- signals -------------------------------------------------------------------

    def _on_child(self, signum: int, frame: Any) -> None:
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # full (a wake-up is pending already) or closed

    def _sleep(self, timeout: float) -> None:
        """Up to ``timeout`` seconds, less when a member ends."""
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        if ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except OSError:
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            logger.warning("Second %s: stopping now.", name)
            self.kill_now = True
            self.stop_deadline = 0.0  # threads cannot be killed: give up on them now
            for handle in self._members():
                handle.kill_reason = f"the worker was stopped at once (second {name})"
                handle.operator_kill = True
                if handle.pid:
                    _kill(handle.pid, signal.SIGKILL)
            return
        logger.info("%s: no new jobs; waiting up to %gs for running ones.", name, self.config.shutdown_grace)
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_grace
        for handle in self._members():
            self._ask_to_stop(handle)

    def _ask_to_stop(self, handle: Handle) -> None:
        if handle.pid:
            _kill(handle.pid, signal.SIGTERM)
        else:
            handle.stop.set()
            if handle.member is not None:
                handle.member.listener.interrupt()

    # -- members -------------------------------------------------------------------

    def _members(self) -> list[Handle]:
        """Every member process or thread, the spare included."""
        return [*self.handles.values(), *([self.spare] if self.spare is not None else [])]

    def _spawn(self, index: int, batch: int = 0) -> None:
        """Fill place ``index`` of the pool: with the spare when one is
        ready (a write to its pipe), else with a new member; ``batch``: the
        claim batch size to start at (0: the member's default)."""
        spare, self.spare = self.spare, None
        if spare is not None:
            self.slots.slot(spare.slot_index).batch = batch
            self.slots.slot(spare.slot_index).contact = time.monotonic()
            try:
                os.write(spare.go, b"g")
            except OSError:  # it died and is not reaped yet: its end is recorded then
                self._reap_spare_later(spare)
            else:
                os.close(spare.go)
                spare.go = 0
                spare.index = index
                self.handles[index] = spare
                # It claims meanwhile: a claim is younger than any lost_after,
                # so no rescuer takes its rows for an unregistered worker's.
                # Registered with the write that follows (_write_pending: the
                # dead member's end), one transaction for both.
                self.unregistered.append(spare.worker_id)
                return
        handle = self.handles[index] = self._start(index, batch)
        self._stop_if_stopping(handle)

    def _stop_if_stopping(self, handle: Handle) -> None:
        """A stop signal that came while ``handle`` was being started found
        it in no list (``_start`` unblocks the signals right after fork,
        before its caller files the handle): ask it now, or it would run on
        until the shutdown grace ends and be killed."""
        if self.stopping:
            self._ask_to_stop(handle)

    def _register(self, worker_id: str) -> None:
        try:
            with db_engine.connect() as conn, conn.begin():
                self._insert_worker(conn, worker_id)
        except db_engine.ERRORS as exc:
            # The heartbeat registers it once the database is back.
            logger.warning("Cannot register %s yet (%s).", worker_id, _first_line(exc))

    def _insert_worker(self, conn: Any, worker_id: str) -> None:
        workers_sql.register_worker(
            conn, worker_id, hostname=self.hostname, pid=os.getpid(), queues=self.config.queues, processes=1,
            now=_now(),
        )

    def _register_unregistered(self, conn: Any = None) -> None:
        """The spares that took a place: on ``conn`` (inside the caller's
        transaction), or each in its own."""
        ids, self.unregistered = self.unregistered, []
        for worker_id in ids:
            if conn is not None:
                self._insert_worker(conn, worker_id)
            else:
                self._register(worker_id)

    def _reap_spare_later(self, spare: Handle) -> None:
        os.close(spare.go)
        spare.go = 0
        self.orphans[spare.pid] = spare

    def _keep_spare(self) -> None:
        if (
            self.spare_wanted
            and self.spare is None
            and not self.stopping
            and self.free_slots
            and time.monotonic() >= self.spare_after
        ):
            try:
                self.spare = self._start(-1)
                self._stop_if_stopping(self.spare)
            except Exception as exc:  # no fork (EAGAIN, ENOMEM), no ledger file...: members go on
                logger.warning("Cannot start a spare worker process (%s); trying again in 5 s.", _first_line(exc))
                self.spare_after = time.monotonic() + 5.0

    def _start(self, index: int, batch: int = 0) -> Handle:
        """A new member for place ``index`` (-1: a spare, which connects
        and then waits for its pipe)."""
        slot_index = self.free_slots[0]
        mark = self.liveness.mark if self.liveness is not None else ""
        worker_id = f"{workers_sql.NATIVE_PREFIX}{self.hostname}:{os.getpid()}:{slot_index}:{mark}{secrets.token_hex(3)}"
        handle = Handle(index=index, worker_id=worker_id, slot_index=slot_index)
        if self.liveness is not None:
            self.liveness.hold(worker_id)  # before the row exists: peers never see it unlocked
        if index >= 0:  # a spare is registered when it takes a place: until then it is no worker
            self._register(worker_id)
        slot = self.slots.slot(slot_index)
        slot.clear()
        slot.batch = batch
        slot.contact = time.monotonic()  # just registered (or about to be, for a spare)
        # Made before fork(): the member writes it, we read it if it dies.
        handle.ledger = Ledger.create(worker_id, self.config.max_pending_per_process, self.ledger_scope)
        if self.routed:
            handle.ledger.routed = RoutedJobs(
                routed_ledger.size_for(get_settings().max_message_size), sockets=self.config.pool == "processes"
            )
        if self.config.pool == "threads":
            member = forked.member_class(self.config)(
                self.config, worker_id, slot, timer=NoTimeout(), should_stop=handle.stop.is_set, ledger=handle.ledger
            )
            handle.member = member

            def target() -> None:
                try:
                    handle.exit_code = member.run()
                except BaseException:
                    logger.exception("Worker thread %s crashed.", worker_id)
                    handle.exit_code = 1
                finally:
                    self._wake()

            handle.thread = threading.Thread(target=target, name=f"jobtable-{slot_index}", daemon=True)
            handle.thread.start()
        else:
            go_read = -1
            if index < 0:
                go_read, handle.go = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            # SIGTERM/SIGINT blocked across the fork: one landing before the
            # child has its own handler would run the supervisor's inherited
            # one in the child and be lost (a member started just as a group
            # SIGTERM came ran on until SIGKILL).  The child unblocks them
            # once its handlers are set (forked.child), the parent at once.
            stop_signals = {signal.SIGTERM, signal.SIGINT}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            try:
                pid = os.fork()
            except OSError:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                if go_read >= 0:
                    os.close(go_read)
                    os.close(handle.go)
                if handle.ledger is not None:
                    handle.ledger.close()
                raise
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                if handle.ledger is not None and handle.ledger.routed is not None:
                    handle.ledger.routed.in_supervisor()
            if pid == 0:  # pragma: no cover - runs in the child
                if handle.go:
                    os.close(handle.go)
                # Copies of other members' broker sockets would hold their connections open.
                routed_ledger.in_child(
                    handle.ledger,
                    [h.ledger for h in (*self._members(), *self.orphans.values())] + [p.ledger for p in self.pending],
                )
                forked.child(self.config, worker_id, slot, os.getppid(), handle.ledger, go_read)
            if go_read >= 0:
                os.close(go_read)
            handle.pid = pid
        self.free_slots.remove(slot_index)
        return handle

    def _reap(self) -> None:
        if self.config.pool == "threads":
            for handle in list(self.handles.values()):
                if handle.thread is not None and not handle.thread.is_alive():
                    self._ended(handle, handle.exit_code if handle.exit_code is not None else 1)
            return
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            # Looked up per pid, not once per call: _ended forks (a
            # replacement, a spare), and such a child can die before this
            # loop ends -- a death missed here would never be recorded.
            ended = self.orphans.pop(pid, None) or next((h for h in self._members() if h.pid == pid), None)
            if ended is not None:
                self._ended(ended, os.waitstatus_to_exitcode(status))

    def _ended(self, handle: Handle, code: int) -> None:
        if handle.index >= 0 and self.handles.get(handle.index) is handle:
            del self.handles[handle.index]
        elif self.spare is handle:
            self.spare = None
        if handle.index < 0:
            self._spare_ended(handle, code)
            return
        slot = self.slots.slot(handle.slot_index)
        running_id = slot.row_id
        batch = slot.batch
        slot.clear()
        self.free_slots.append(handle.slot_index)
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        why = handle.kill_reason or f"the worker process {how} while running the job"
        crashed = code != 0 and code != EXIT_BURST_DONE
        if crashed:
            logger.warning("Worker %s %s.", handle.worker_id, how)
        state = handle.ledger.state() if handle.ledger is not None else None
        routed_part = handle.ledger.routed if handle.ledger is not None else None
        routed_jobs: list[RoutedJob] = []
        routed_complete = True
        if routed_part is not None:
            routed_part.receive_sockets()  # held until its end is written
            routed_jobs, routed_complete = routed_part.jobs()
        self.pending.append(
            Pending(
                handle.worker_id,
                running_id,
                why,
                lose_running=crashed or bool(handle.kill_reason),
                state=state,
                why_finished=f"the worker process {how} after the job had finished, before its result was written",
                poison=not handle.operator_kill,
                ledger=handle.ledger,
                cancelled_row=handle.cancelled_row,
                cancelled_how=handle.cancelled_how,
                routed=routed_jobs,
                routed_complete=routed_complete,
            )
        )
        self.cancels.forget(handle.worker_id)
        # The replacement first (the spare: at once): it claims while the
        # dead member's jobs are recorded (its unstarted ones go back to
        # pending for anyone).  A new spare is made after, by the loop.
        if code == EXIT_BURST_DONE:
            self.finished.add(handle.index)
        elif not self.stopping:
            self._spawn(handle.index, batch)
            self.spare_wanted = self.use_spare
            self._keep_spare()  # the next spare before the write: ready sooner for deaths in a row
        self._write_pending()

    def _spare_ended(self, handle: Handle, code: int) -> None:
        """A spare that never took a place ended: it ran no job, claimed none."""
        if handle.go:
            os.close(handle.go)
            handle.go = 0
        self.slots.slot(handle.slot_index).clear()
        self.free_slots.append(handle.slot_index)
        if code != 0 and not self.stopping:
            logger.warning("Spare worker %s exited with code %s before it was needed.", handle.worker_id, code)
            self.spare_after = time.monotonic() + 1.0  # no fork loop if spares cannot start
        self.pending.append(
            Pending(handle.worker_id, 0, "", lose_running=False, state=None, ledger=handle.ledger)
        )
        self._write_pending()

    def _write_pending(self) -> None:
        while self.pending:
            item = self.pending[0]
            registering: list[str] = []
            try:
                with db_engine.connect() as conn, conn.begin():
                    registering = self.unregistered
                    self._register_unregistered(conn)
                    if item.cancelled_row:
                        cancels.record_killed(
                            conn, item.worker_id, item.cancelled_row, item.cancelled_how, _now(), why=item.why
                        )
                    rescue.rescue_member(
                        conn,
                        item.worker_id,
                        item.running_id,
                        _now(),
                        why=item.why,
                        lose_running=item.lose_running,
                        ledger=item.state,
                        why_finished=item.why_finished,
                        poison=item.poison,
                        quarantine_after=self.config.quarantine_after,
                    )
                    if item.routed or not item.routed_complete:
                        lost.record_dead_member(
                            conn, item.worker_id, item.routed, item.routed_complete, _now(), why=item.why,
                            why_finished=item.why_finished, poison=item.poison,
                            quarantine_after=self.config.quarantine_after,
                        )
                if self.liveness is not None:
                    self.liveness.release(item.worker_id)
            except db_engine.ERRORS as exc:
                # The ledger file stays: should we die too, a peer rescues from it.
                logger.warning("Cannot record the end of %s yet (%s).", item.worker_id, _first_line(exc))
                # Rolled back: the replacements' rows on their own (or by
                # the heartbeat, once the database is back).
                self.unregistered = registering + self.unregistered
                self._register_unregistered()
                return
            self.pending.pop(0)
            if item.ledger is not None:
                item.ledger.close()
        self._register_unregistered()

    def _enforce_deadlines(self) -> None:
        now = mono = time.monotonic()  # slot deadlines are monotonic (worker/slots.py)
        if self.stopping and mono > self.stop_deadline:
            for handle in self._members():
                if handle.pid and not handle.kill_reason:
                    handle.kill_reason = (
                        f"the worker shut down and the job did not finish within {self.config.shutdown_grace:g} s"
                    )
                    handle.operator_kill = True
                    _kill(handle.pid, signal.SIGKILL)
            if self.config.pool == "threads" and self.handles:
                # Threads cannot be killed: record their jobs and leave.
                for handle in list(self.handles.values()):
                    if not handle.kill_reason:
                        handle.kill_reason = (
                            f"the worker shut down and the job did not finish within {self.config.shutdown_grace:g} s"
                        )
                        handle.operator_kill = True
                    self._ended(handle, 1)
        for handle in list(self.handles.values()):
            slot = self.slots.slot(handle.slot_index)
            overdue = self.cancels.overdue(handle, slot)
            if overdue and handle.pid and not handle.kill_reason:
                handle.kill_reason = (
                    f"the job was cancelled and did not stop within {self.config.timeout_grace:g} s; "
                    "its worker process was killed"
                )
                handle.cancelled_row, handle.cancelled_how = overdue, slot.cancel[1]
                handle.operator_kill = True  # not the job's crash: no quarantine count
                logger.warning("Worker %s: cancelled job %s did not stop; killing it.", handle.worker_id, overdue)
                _kill(handle.pid, signal.SIGKILL)
                continue
            deadline = slot.deadline
            if not deadline or now <= deadline:
                continue
            if handle.pid and now > deadline + self.config.timeout_grace and not handle.kill_reason:
                handle.kill_reason = (
                    f"the job ran past its timeout and did not stop within {self.config.timeout_grace:g} s; "
                    "its worker process was killed"
                )
                logger.warning("Worker %s: job %s is stuck past its timeout; killing it.", handle.worker_id, slot.row_id)
                _kill(handle.pid, signal.SIGKILL)
            elif handle.thread is not None and handle.timed_out_row != slot.row_id:
                handle.timed_out_row = slot.row_id
                raise_in_thread(handle.thread)

def _preload_for_members() -> None:
    """Import here, once, what members would otherwise import lazily, each
    on its own: ``params`` imports ``sqlalchemy.orm`` on the first value it
    cannot encode natively (a model reference, or a return value that is not
    JSON) -- ~70 ms of CPU in every member and in every replacement of a
    member that died, which the poison drain paid ~17 times per 10,000 jobs.
    Imported before fork, members share it."""
    try:
        import sqlalchemy.orm  # noqa: F401
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        pass


def _warm_for_members(engine: Any, queues: list[str]) -> None:
    """Build and compile, once before forking, the statements every member
    runs first -- the claim (``claims_sql.claim`` with a limit of 0: it
    claims nothing) -- so that members inherit them: ~4 ms of a new
    member's first claim, paid again by every replacement of a member that
    died, was the textual claim being built and compiled (the engine's
    compiled cache is the supervisor's, inherited at fork).  Never fatal: a
    member compiles it itself."""
    try:
        with db_engine.connect(engine) as conn, conn.begin():
            claims_sql.claim(conn, queues, 0, worker_id="", now=_now())
    except db_engine.ERRORS as exc:
        logger.debug("Could not warm the claim before forking (%s).", _first_line(exc))


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_worker(config: WorkerConfig) -> int:
    return Supervisor(config).run()
