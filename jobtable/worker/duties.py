"""The supervisor's periodic duties, run on timers from its loop (main.py).

Each tick ``Duties.run_due`` runs what is due, each duty in its own
transaction: the schedule's ticks, the liveness look for dead peers, the
heartbeat for the members (again at most every ``RUNNING_EVERY`` when a
member started or finished a job), the cancel check, the rescue of workers
that stopped heartbeating, the relay of routed queues' due rows, the look at rates set by
remote control (members re-read them only when they changed: one
statement a second per worker, none in the members' job loop), the purge
of old results, expired broadcasts and stale ledger files, and the stats
line.  A duty whose database cannot be reached is logged and tried again
on a later tick.  The duties read the pool through ``Pool``: they never
start or stop a member themselves.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..db import engine as db_engine
from ..db import bindings_sql, clock, operations_sql, ratelimit_sql, rescue_sql, workers_sql
from ..exceptions import ConfigurationError
from ..setting_rules import safe_str
from . import cancels, rate_epoch
from . import ledger as ledgers
from . import rescue
from .config import WorkerConfig
from .ledger import Ledger
from .liveness import Liveness
from .slots import Slots
from .stats import StatsReporter

logger = logging.getLogger("jobtable.worker")

RETENTION_EVERY = 60.0
#: Routed queues' delayed jobs, retries and key rows are published within
#: this many seconds of being due (routing/relay.py), up to RELAY_ROUNDS
#: batches per tick.
RELAY_EVERY = 0.1
RELAY_ROUNDS = 5
#: How often the supervisor checks its liveness connection and looks for
#: peers known to be dead (worker/liveness.py).
LIVENESS_EVERY = 0.25
#: Soonest the heartbeat runs again when a member started or finished a job:
#: the rows' running_id (what makes a claimed request "running" for the
#: reads) lags a start by at most this, and costs at most this many small
#: UPDATEs per second per worker whatever the job rate -- not one per job.
RUNNING_EVERY = 0.5


class Held(Protocol):
    """A member as the duties see it (main.Handle, main.Pending)."""

    @property
    def worker_id(self) -> str: ...


class Placed(Held, Protocol):
    """A member in a place of the pool (main.Handle)."""

    @property
    def slot_index(self) -> int: ...
    @property
    def ledger(self) -> Ledger | None: ...


class Pool(Protocol):
    """What the duties read of the supervisor that runs them (main.Supervisor)."""

    @property
    def config(self) -> WorkerConfig: ...
    @property
    def hostname(self) -> str: ...
    @property
    def handles(self) -> Mapping[int, Placed]: ...
    @property
    def pending(self) -> Sequence[Held]: ...
    @property
    def slots(self) -> Slots: ...
    @property
    def liveness(self) -> Liveness | None: ...
    @property
    def cancels(self) -> cancels.Watch: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def routed(self) -> list[str]: ...
    @property
    def ledger_scope(self) -> str: ...

    def _members(self) -> Sequence[Held]: ...
    def _write_pending(self) -> None: ...


class Duties:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.stats = StatsReporter(pool.config.queues)
        self._due: dict[str, float] = {}
        self._reported_running: dict[str, int] = {}  # what the last heartbeat wrote
        self._rates: dict[str, float] | None = None  # the remote-control rates last read
        self.scheduler: Any = None
        self.scheduler_retry_at = 0.0

    def every(self, name: str, seconds: float) -> bool:
        mono = time.monotonic()
        if mono >= self._due.get(name, 0.0):
            self._due[name] = mono + seconds
            return True
        return False

    def run_due(self) -> None:
        pool = self.pool
        cfg = pool.config
        if pool.pending:
            pool._write_pending()
        if (
            self.scheduler is not None
            and not pool.stopping
            and time.monotonic() >= self.scheduler_retry_at
            and self.scheduler.seconds_until_due() <= 0
        ):
            self.tick_scheduler()
        if pool.liveness is not None and self.every("liveness", LIVENESS_EVERY):
            pool.liveness.tick()
            self.run("liveness")
        if self.every("heartbeat", cfg.heartbeat_every) or (
            self.running_now() != self._reported_running and self.every("running", RUNNING_EVERY)
        ):
            sent = time.monotonic()
            for handle in pool.handles.values():
                if handle.ledger is not None and handle.ledger.routed is not None:
                    handle.ledger.routed.receive_sockets()  # only the newest is kept
            if self.run("heartbeat"):
                # Members may start the jobs they hold for lost_after / 2
                # from when this heartbeat was sent (process.py _still_ours).
                for handle in pool.handles.values():
                    pool.slots.slot(handle.slot_index).contact = sent
        if self.every("cancels", cancels.CHECK_EVERY) and any(self.running_now().values()):
            self.run("cancels")
        if self.every("rescue", max(0.5, cfg.lost_after / 3)):
            self.run("rescue")
        if pool.routed and not pool.stopping and self.every("relay", RELAY_EVERY):
            self.relay()
        if not pool.stopping and self.every("retention", RETENTION_EVERY):
            self.run("retention")
        if self.every("rates", ratelimit_sql.OVERRIDES_TTL):
            self.run("rates")
        if cfg.stats_every and self.every("stats", cfg.stats_every):
            self.run("stats")

    def run(self, name: str, rescue_first: bool = False) -> bool:
        """Run one periodic duty in its own transaction; False when the
        database could not be reached (logged; the next tick retries)."""
        pool = self.pool
        try:
            with db_engine.connect() as conn, conn.begin():
                now = _now()
                if name == "heartbeat":
                    ids = [h.worker_id for h in pool.handles.values()]
                    running = self.running_now()
                    lost = workers_sql.heartbeat(conn, ids, now, running)
                    self._reported_running = running
                    for worker_id in lost:
                        logger.warning("Worker %s had been declared lost; registering it again.", worker_id)
                        workers_sql.register_worker(
                            conn, worker_id, hostname=pool.hostname, pid=os.getpid(),
                            queues=pool.config.queues, processes=1, now=now,
                        )
                    if lost:
                        self.disown(conn, lost)
                elif name == "liveness" and pool.liveness is not None:
                    own = {h.worker_id for h in pool._members()} | {p.worker_id for p in pool.pending}
                    dead = pool.liveness.dead(conn, own, pool.hostname)
                    if dead:
                        rescue.rescue_known_dead(
                            conn, dead, now, why=pool.liveness.why, quarantine_after=pool.config.quarantine_after
                        )
                elif name == "cancels":
                    asked = pool.cancels.check(conn, self.running_now(), now)
                    for handle in list(pool.handles.values()):
                        if handle.worker_id in asked:
                            row_id, how = asked[handle.worker_id]
                            pool.cancels.stop(handle, pool.slots.slot(handle.slot_index), row_id, how)
                elif name == "rescue":
                    rescue.rescue_dead(conn, pool.config.lost_after, now, quarantine_after=pool.config.quarantine_after)
                elif name == "retention":
                    before = now - timedelta(seconds=pool.config.results_retention)
                    operations_sql.clear_results(conn, before, batch=500)
                    # Celery broadcasts past their expiry, e.g. in a dead node's pidbox.
                    bindings_sql.purge_expired_control(conn, now)
                    self.sweep_ledgers(conn)
                elif name == "rates":
                    # Stored by any worker's control listener (Celery's
                    # rate_limit broadcast); members re-read on the bump.
                    read = ratelimit_sql.overrides(conn)
                    if read != self._rates:
                        # The first read too: a rate stored before it may
                        # postdate what the members read when they started.
                        rate_epoch.bump()
                        self._rates = read
                elif name == "stats":
                    # Logged once (jobtable.stats), not printed too: one timestamped
                    # line in the stream the rest of the worker's output goes to.
                    self.stats.report(conn, pool.slots.done_total())
        except db_engine.ERRORS as exc:
            logger.warning("Worker %s could not %s (%s); will retry.", os.getpid(), name, _first_line(exc))
            return False
        return True

    def relay(self) -> None:
        """Publish the routed queues' due rows (routing/relay.py); a broker
        or database that cannot be reached is logged, the next tick retries."""
        from ..routing import publish, relay

        try:
            for _ in range(RELAY_ROUNDS):
                with db_engine.connect() as conn, conn.begin():
                    if relay.relay(conn, self.pool.routed, _now()) < relay.BATCH:
                        break
        except (publish.PublishError,) + db_engine.ERRORS as exc:
            logger.warning("Worker %s could not relay routed jobs (%s); will retry.", os.getpid(), _first_line(exc))

    def disown(self, conn: Any, lost: set[str]) -> None:
        """Members declared lost meanwhile (cut off from the database for
        longer than ``lost_after``): a rescuer took the rows they held.  Each
        is told (its slot) not to start the jobs it still holds, and its
        running job is stopped unless its row is still the member's -- the
        way a cancelled job is (cancels.py); whatever it ends with is not
        written (``finish_sql.finish`` only writes rows still the member's)."""
        pool = self.pool
        for handle in list(pool.handles.values()):
            if handle.worker_id not in lost:
                continue
            slot = pool.slots.slot(handle.slot_index)
            slot.disowned = True
            row_id = slot.row_id
            if row_id and row_id not in rescue_sql.held(conn, handle.worker_id, [row_id]):
                pool.cancels.stop(
                    handle, slot, row_id, cancels.CANCEL,
                    why="was rescued by another worker while this one could not reach the database",
                )

    def running_now(self) -> dict[str, int]:
        """Each member's request running right now (its slot, shared memory:
        no database read), 0 between jobs."""
        slots = self.pool.slots
        return {h.worker_id: slots.slot(h.slot_index).row_id for h in self.pool.handles.values()}

    def sweep_ledgers(self, conn: Any) -> None:
        """Delete ledger files left by dead workers of this machine once the
        database no longer knows them (rescued), and unusable ones."""
        junk, dead = ledgers.stale_files(self.pool.ledger_scope)
        referenced = workers_sql.workers_referenced(conn, sorted(dead))
        ledgers.remove(junk + [path for worker_id, path in dead.items() if worker_id not in referenced])

    def tick_scheduler(self) -> None:
        # Every supervisor ticks; the ledger makes each slot fire once.
        try:
            self.scheduler.tick()
        except Exception as exc:
            logger.warning("Scheduler tick failed (%s); retrying in a second.", _first_line(exc))
            self.scheduler_retry_at = time.monotonic() + 1.0


def make_scheduler() -> Any:
    """The schedule of JOBTABLE_SCHEDULE and of registered jobs' ``schedule``
    attributes, or None when there is nothing to schedule."""
    from ..scheduler import Scheduler

    try:
        scheduler = Scheduler()
    except ConfigurationError as exc:
        raise ConfigurationError(f"The worker does not start: its schedule cannot load. {exc}") from exc
    except Exception as exc:  # a job module failing to import, a schedule attribute raising...
        raise ConfigurationError(
            f"The worker does not start: its schedule (JOBTABLE_SCHEDULE and the schedule attributes of "
            f"registered jobs) cannot load: {safe_str(exc)}. Fix or remove the entry."
        ) from exc
    if not scheduler.entries:
        return None
    logger.info("Scheduling %d entr%s.", len(scheduler.entries), "y" if len(scheduler.entries) == 1 else "ies")
    return scheduler


def _now() -> datetime:
    # The database's clock, never this host's (db/clock.py).
    return clock.utcnow()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
