"""Job schedules fired by a Celery worker that runs Jobs (``register_jobs``).

Every native worker runs jobtable's scheduler (``jobtable.scheduler``), and
a slot fires once however many workers run it: the ledger in
``jobtable_schedule`` is claimed in the transaction that enqueues the job.
A project that runs only Celery workers while it moves to Jobs expects its
Job schedules (``schedule = Schedule.from_cron(...)``, ``JOBTABLE_SCHEDULE``)
to fire too, so the Celery worker of an app given to ``register_jobs`` runs
the same scheduler in its main process: a thread started when the worker is
ready (``worker_ready``) and stopped at its shutdown.  Nothing else changes:
Celery beat is not involved, and the Celery worker and native workers share
one ledger, so each slot is enqueued once across all of them.

The scheduled jobs go to the database the worker consumes (the jobtable
broker's), else to ``JOBTABLE_DATABASE_URL``'s.  ``register_jobs(app,
schedules=False)`` turns this off; the worker then warns at start, naming
the entries and who must fire them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

from ..db import engine as db_engine
from ..exceptions import ConfigurationError
from ..setting_rules import safe_str

logger = logging.getLogger("jobtable.celery")

#: Seconds between looks while nothing is due (a tick itself is cheap).
MAX_WAIT = 1.0

#: app -> whether its worker fires schedules (weak: apps made and dropped,
#: as tests do, are not kept alive here).
_watched: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_connected = False
_runner: ScheduleThread | None = None


def watch(app: Any, *, run: bool) -> None:
    """Fire (``run``) or warn about Job schedules in ``app``'s Celery worker."""
    global _connected
    _watched[app] = run
    if _connected:
        return
    from celery.signals import worker_ready, worker_shutdown

    worker_ready.connect(_on_ready, weak=False, dispatch_uid="jobtable.celery_job_schedules.ready")
    worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid="jobtable.celery_job_schedules.shutdown")
    _connected = True


def _on_ready(sender: Any = None, **_: Any) -> None:
    global _runner
    app = getattr(sender, "app", None)
    run = _watched.get(app) if app is not None else None
    if run is None or _runner is not None:
        return
    try:
        scheduler = _make_scheduler(_engine_of(sender))
    except ConfigurationError as exc:
        if not run:  # this worker fires none of them anyway
            logger.warning("%s", safe_str(exc))
            return
        # As a jobtable worker refuses to start: a worker that silently
        # fired none of them would be found out when a report never came.
        # Celery's signal dispatch logs and swallows an Exception, but a
        # SystemExit reaches its WorkController, which stops with the code.
        logger.critical("%s", safe_str(exc))
        raise SystemExit(1) from None
    if scheduler is None:
        return
    if not run:
        logger.warning(
            "jobtable: this Celery worker does not fire the %d Job schedule entr%s (%s): "
            "register_jobs(app, schedules=False). Run a `jobtable worker` (or a Celery worker of an app "
            "registered with schedules=True) or they never run.",
            len(scheduler.entries), "y" if len(scheduler.entries) == 1 else "ies",
            ", ".join(entry.name for entry in scheduler.entries)[:1000],
        )
        return
    _runner = ScheduleThread(scheduler)
    _runner.start()
    logger.info(
        "jobtable: this Celery worker fires %d Job schedule entr%s on %s (each slot once across all workers).",
        len(scheduler.entries), "y" if len(scheduler.entries) == 1 else "ies",
        db_engine.describe(scheduler.engine),
    )


def _on_shutdown(**_: Any) -> None:
    global _runner
    runner, _runner = _runner, None
    if runner is not None:
        runner.stop()


def _engine_of(consumer: Any) -> Any:
    """The jobtable broker's engine of the worker's connection, or None
    (another broker: the settings' database is used)."""
    from sqlalchemy.engine import Engine

    try:
        engine = consumer.connection.transport.engine
    except Exception:  # not the jobtable transport, or no connection yet
        return None
    return engine if isinstance(engine, Engine) else None


def _make_scheduler(engine: Any) -> Any:
    """A Scheduler of every entry, or None when there are none; a
    ConfigurationError naming the fix when they cannot load."""
    from ..scheduler import Scheduler

    try:
        scheduler = Scheduler(engine=engine)
    except Exception as exc:
        raise ConfigurationError(
            f"jobtable: the Job schedules cannot load, so this Celery worker stops: {safe_str(exc)}. "
            "Fix JOBTABLE_SCHEDULE or the schedule attribute of the job named there, or pass "
            "register_jobs(app, schedules=False) if this worker must not fire them."
        ) from exc
    return scheduler if scheduler.entries else None


class _ForkGuard:
    """Keeps forks out of the thread's database calls: Celery's prefork pool
    forks replacement members from this process while the thread runs, and
    a fork taken inside a driver call copies that call's locks (SQLite's VFS
    mutex, a pool's mutex) into the child, which then hangs in its first
    connect.  ``os.fork`` takes the guard first (an at-fork hook), so it
    waits for a tick in progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # the child has no scheduler thread

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_guard: _ForkGuard | None = None


class ScheduleThread:
    """Ticks one Scheduler in a daemon thread until stopped."""

    def __init__(self, scheduler: Any) -> None:
        global _guard
        if _guard is None:
            _guard = _ForkGuard()
        self.scheduler = scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobtable-celery-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        retry_at = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= retry_at and self.scheduler.seconds_until_due() <= 0:
                try:
                    assert _guard is not None
                    with _guard:
                        self.scheduler.tick()
                except Exception as exc:
                    logger.warning("jobtable: scheduler tick failed (%s); retrying in a second.", safe_str(exc))
                    retry_at = time.monotonic() + 1.0
            self._stop.wait(max(0.01, min(MAX_WAIT, self.scheduler.seconds_until_due())))
