"""The scheduler: enqueues each due slot of each schedule entry exactly once.

Call it from any number of worker processes; they agree through one ledger
row per entry in ``jobtable_schedule`` (the last slot enqueued).  A slot is
claimed by a conditional upsert that moves the row forward only if it is
behind, and the job is enqueued in the same transaction -- so a slot is
enqueued once whatever the number of workers, and never lost to a crash
between the claim and the enqueue.  Nothing is enqueued ahead of time.

Use::

    from jobtable.scheduler import Scheduler

    scheduler = Scheduler()     # after the app's jobs are imported (load_app)
    while running:
        scheduler.tick()        # about once a second
        ...                     # sleep at most scheduler.seconds_until_due()

``tick()`` touches the database only when an entry is due (plus once, on
the first call, to read and tidy the ledger), so calling it often is cheap.
A Scheduler belongs to one thread; each process makes its own.

Rules:

- after downtime only the latest missed slot of an entry runs, and only if it
  is at most ``JOBTABLE_SCHEDULE_CATCH_UP_WINDOW`` seconds old; an older one
  is skipped (the ledger still moves to it);
- a new entry starts with the first slot after it is first seen (a deploy at
  9:10 does not run the 9:00 slot of a job it just added);
- an entry's name contains its schedule: changing the cron makes a new entry,
  and ledger rows of entries that no longer exist are deleted by the first
  tick of each Scheduler (``jobtable schedule --prune`` does it by hand);
- the job is enqueued with a concurrency key per entry (unless its class
  has its own): when the previous run of the entry is still waiting or
  running, the slot is skipped instead of piling up runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .db import engine as db_engine
from .db import clock, schedules_sql
from .exceptions import DatabaseUnavailable
from .jobs import JobRequest
from .scheduling import ScheduleEntry, schedule_entries

log = logging.getLogger("jobtable.scheduler")

#: After an entry failed to enqueue (bad arguments, import error...), try again after this.
RETRY_AFTER = timedelta(seconds=30)

#: Longest catch-up window (the setting's bound: a year).
MAX_WINDOW = 366 * 86400


@dataclass(frozen=True)
class Fired:
    name: str
    slot: datetime
    request: JobRequest | None = None


@dataclass
class TickReport:
    """What one ``tick()`` did."""

    #: Slots enqueued by this process.
    enqueued: list[Fired] = field(default_factory=list)
    #: Slots claimed but not enqueued: the entry's previous run still waits or runs.
    busy: list[Fired] = field(default_factory=list)
    #: Slots older than the catch-up window: skipped, ledger moved on.
    late: list[Fired] = field(default_factory=list)
    #: Entries that failed to enqueue (retried after RETRY_AFTER).
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    #: When the next entry is due (None: no entries).
    next_due: datetime | None = None


def _concurrency_key(entry: ScheduleEntry) -> str:
    own = entry.job.resolved_concurrency_key()
    if own:
        return own
    key = f"schedule:{entry.name}"
    if len(key) > 255:
        key = "schedule:" + hashlib.sha256(entry.name.encode()).hexdigest()
    return key


class Scheduler:
    """Enqueues due slots of ``entries`` (default: every scheduled job:
    JOBTABLE_SCHEDULE and ``schedule`` class attributes of registered jobs).

    ``engine``: the database (default: JOBTABLE_DATABASE_URL's engine of the
    calling process).  ``catch_up_window``: seconds (default: the setting).
    ``prune``: delete ledger rows of entries not in ``entries`` on the first
    tick (turn off when several schedulers with different entries share a
    database on purpose).
    """

    def __init__(
        self,
        entries: Sequence[ScheduleEntry] | None = None,
        *,
        engine: Engine | None = None,
        catch_up_window: int | float | timedelta | None = None,
        prune: bool = True,
    ) -> None:
        self.entries = list(entries) if entries is not None else schedule_entries()
        self._engine = engine
        if catch_up_window is None:
            from .settings import get_settings

            catch_up_window = get_settings().schedule_catch_up_window
        self.catch_up_window = _window(catch_up_window)
        self.prune = prune
        self._next_due: dict[str, datetime] | None = None

    @property
    def engine(self) -> Engine:
        # Resolved per call: get_engine() gives a forked child its own engine.
        return self._engine or db_engine.get_engine()

    @property
    def next_due(self) -> datetime | None:
        """When the next entry is due (None before the first tick or without entries)."""
        if not self._next_due:
            return None
        return min(self._next_due.values())

    def seconds_until_due(self, now: datetime | None = None) -> float:
        """Seconds until ``tick()`` has something to do (0 before the first tick)."""
        if self._next_due is None:
            return 0.0
        due = self.next_due
        if due is None:
            return float("inf")
        return max(0.0, (due - (now or clock.utcnow())).total_seconds())

    def tick(self, now: datetime | None = None) -> TickReport:
        """Enqueue every slot due at ``now`` (default: the current time)."""
        now = now or clock.utcnow()
        if self._next_due is None:
            self._next_due = self._start(now)
        report = TickReport()
        for entry in self.entries:
            if self._next_due[entry.name] <= now:
                self._fire(entry, now, report)
        report.next_due = self.next_due
        return report

    # -- internals ------------------------------------------------------------------

    def _start(self, now: datetime) -> dict[str, datetime]:
        """Read the ledger once: create rows of new entries, drop rows of
        removed ones, and work out when each entry is next due."""
        latest = {entry.name: entry.schedule.latest(now) for entry in self.entries}
        with db_engine.connect(self.engine) as conn, conn.begin():
            if self.prune:
                removed = schedules_sql.schedule_prune(conn, list(latest))
                if removed:
                    log.info("Removed schedule ledger rows of entries that no longer exist: %s", ", ".join(removed))
            rows = schedules_sql.schedule_rows(conn)
            # A new entry's row has no slot yet ("never run"); its updated_at
            # records when it was first seen, which is where it starts.
            schedules_sql.schedule_seed(conn, {name: None for name in latest if name not in rows}, now)
        due: dict[str, datetime] = {}
        for entry in self.entries:
            row = rows.get(entry.name)
            if row is None:
                last = latest[entry.name]
            elif row.last_slot is None:
                last = entry.schedule.latest(row.updated_at)
            else:
                last = row.last_slot
            if latest[entry.name] > last:
                due[entry.name] = now  # a slot was missed: see in _fire whether it is too late
            else:
                due[entry.name] = entry.schedule.next(max(now, last))
        return due

    def _fire(self, entry: ScheduleEntry, now: datetime, report: TickReport) -> None:
        assert self._next_due is not None
        slot = entry.schedule.latest(now)
        late = now - slot > self.catch_up_window
        try:
            with db_engine.connect(self.engine) as conn, conn.begin():
                if schedules_sql.schedule_claim(conn, entry.name, slot, now):
                    if late:
                        report.late.append(Fired(entry.name, slot))
                        log.warning(
                            "Skipped %s of %s: %s late, beyond the catch-up window of %s.",
                            slot.isoformat(), entry.name, now - slot, self.catch_up_window,
                        )
                    else:
                        request = entry.job.run_in_worker(connection=conn, concurrency_key=_concurrency_key(entry))
                        fired = Fired(entry.name, slot, request)
                        if request is None:
                            report.busy.append(fired)
                            log.info("Skipped %s of %s: its previous run is still waiting or running.",
                                     slot.isoformat(), entry.name)
                        else:
                            report.enqueued.append(fired)
                            log.info("Enqueued %s for %s (job %s).", entry.name, slot.isoformat(), request.uuid)
        except (DBAPIError, DatabaseUnavailable):
            raise  # the database is the worker's problem, not this entry's
        except Exception as exc:
            log.exception("Could not enqueue scheduled %s for %s; retrying in %s.", entry.name, slot, RETRY_AFTER)
            report.errors.append((entry.name, exc))
            self._next_due[entry.name] = now + RETRY_AFTER
            return
        self._next_due[entry.name] = entry.schedule.next(slot)


def _window(value: Any) -> timedelta:
    """The catch-up window as a timedelta: 0 seconds or more, and finite."""
    from .exceptions import ConfigurationError

    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_WINDOW:
        raise ConfigurationError(
            f"Scheduler(catch_up_window={value!r}): the schedule catch-up window must be 0 seconds or more "
            f"(at most {MAX_WINDOW}), as seconds or a timedelta. Set it, or JOBTABLE_SCHEDULE_CATCH_UP_WINDOW, "
            "to a number of seconds such as 3600."
        )
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def ledger(engine: Engine | None = None) -> dict[str, Any]:
    """The ledger rows by entry name (for ``jobtable schedule``)."""
    with db_engine.connect(engine) as conn, conn.begin():
        return schedules_sql.schedule_rows(conn)
