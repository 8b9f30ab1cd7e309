"""Stopping a running job that was cancelled (db/cancels_sql.py marks it).

How the member learns: the supervisor, four times a second while one of its
members runs a job (``CHECK_EVERY``), reads which of those rows carry a
stored cancel mark -- one indexed join of at most a pool's worth of rows,
no statement at all while the pool is idle.  So a job stops within ~0.25 s
of its cancel plus the time its code takes to notice (a Python-level sleep
or loop: at once).

How it stops, as a timeout does (timeouts.py):

- processes pool: the supervisor writes the row id into the member's slot
  and sends SIGUSR2; the member's handler raises ``JobCancelled`` in the
  job only while that very row runs (the slot's row and the armed row
  agree), so a signal that lands after the job ended, or during the next
  one, does nothing.  The attempt is recorded CANCELLED by the member, with
  its other jobs untouched.  A job that does not end within
  ``JOBTABLE_WORKER_TIMEOUT_GRACE`` seconds (stuck in C code, or swallowing
  the exception) has its member killed; the supervisor records that
  attempt CANCELLED (not LOST, not counted towards quarantine), gives back
  the member's unstarted jobs and replaces it (rescue.py, main.py).
- threads pool: ``JobCancelled`` is raised in the member's thread at its
  next bytecode (``PyThreadState_SetAsyncExc``); a thread cannot be killed.

Every cancelled attempt ends without retry: its result is CANCELLED
(``jobtable.JobCancelled``), or REVOKED for Celery's ``revoke(terminate=
True)`` (``celery.exceptions.TaskRevokedError``, as a Celery worker records).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import datetime
from types import FrameType
from typing import Any

from sqlalchemy.engine import Connection

from ..db import cancels_sql, finish_sql, rescue_sql, tables
from .errors import JobCancelled
from .slots import Slot
from .timeouts import raise_in_thread

logger = logging.getLogger("jobtable.worker")

#: Seconds between the supervisor's reads of the cancel marks.
CHECK_EVERY = 0.25
#: The signal that tells a member process to cancel its running job
#: (SIGUSR1 is the Celery runner's soft time limit: shim/celery_runner.py).
SIGNAL = signal.SIGUSR2

#: Slot codes of how a cancel is recorded.
CANCEL, REVOKE = 1, 2
_HOW = {cancels_sql.CANCELLED_ERROR: CANCEL, cancels_sql.REVOKED_ERROR: REVOKE}


def fields(how: int) -> dict[str, Any]:
    """The result columns of an attempt cancelled the ``how`` way."""
    if how == REVOKE:
        return {"error_type": cancels_sql.REVOKED_ERROR, "error_message": "terminated"}
    return {"error_type": cancels_sql.CANCELLED_ERROR, "error_message": "Cancelled while running."}


class Cancellable:
    """A member process's timer (timeouts.AlarmTimeout) that also takes
    the supervisor's cancel signal while a job runs."""

    def __init__(self, inner: Any, slot: Slot) -> None:
        self.inner = inner
        self.slot = slot
        self._armed_row = 0
        signal.signal(SIGNAL, self._fire)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        row = self._armed_row
        if row and self.slot.cancel[0] == row and self.slot.row_id == row:
            self._armed_row = 0
            raise JobCancelled()

    def arm(self, seconds: float) -> None:
        # The executor starts the slot (its row id) before it arms.
        self._armed_row = self.slot.row_id
        self.inner.arm(seconds)
        if self._armed_row and self.slot.cancel[0] == self._armed_row:
            # Asked while the job was being prepared: stop it now.
            self._armed_row = 0
            self.inner.disarm()
            raise JobCancelled()

    def disarm(self) -> None:
        self._armed_row = 0
        self.inner.disarm()


class Watch:
    """The supervisor's side: which running rows to stop, stopping them, and
    killing a member whose job did not stop in time."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        #: worker id -> (row id asked, monotonic deadline)
        self.asked: dict[str, tuple[int, float]] = {}

    def check(self, conn: Connection, running: dict[str, int], now: datetime) -> dict[str, tuple[int, int]]:
        """Members (worker id) whose running row is marked: -> (row, how)."""
        rows = {row_id: worker_id for worker_id, row_id in running.items() if row_id}
        marked = cancels_sql.asked(conn, list(rows), now)
        return {rows[row_id]: (row_id, _HOW[error]) for row_id, error in marked.items()}

    def stop(self, handle: Any, slot: Slot, row_id: int, how: int, why: str = "was cancelled") -> None:
        """Ask ``handle``'s member to stop ``row_id`` (once per row)."""
        if self.asked.get(handle.worker_id, (0, 0.0))[0] == row_id:
            return
        self.asked[handle.worker_id] = (row_id, time.monotonic() + self.grace)
        slot.ask_cancel(row_id, how)
        logger.warning("Worker %s: job %s %s; stopping it.", handle.worker_id, row_id, why)
        if handle.pid:
            try:
                os.kill(handle.pid, SIGNAL)
            except ProcessLookupError:
                pass
        elif handle.thread is not None:
            raise_in_thread(handle.thread, JobCancelled)

    def overdue(self, handle: Any, slot: Slot) -> int:
        """The row ``handle``'s member was asked to stop and still runs past
        the grace (0: none): the caller kills the member."""
        row_id, deadline = self.asked.get(handle.worker_id, (0, 0.0))
        if not row_id:
            return 0
        if slot.row_id != row_id:
            del self.asked[handle.worker_id]  # it stopped (or ended first)
            return 0
        return row_id if time.monotonic() > deadline else 0

    def forget(self, worker_id: str) -> None:
        self.asked.pop(worker_id, None)


def record_killed(conn: Connection, worker_id: str, row_id: int, how: int, now: datetime, *, why: str) -> int:
    """The attempt of a member killed because its cancelled job did not
    stop: recorded CANCELLED (never LOST, never retried) before the rest of
    the member is rescued.  Returns 1 when recorded, 0 when it had ended."""
    rows = rescue_sql.take_running(conn, worker_id, [row_id])
    if not rows:
        return 0
    values = fields(how)
    values["error_message"] = f"{values['error_message']} ({why})"
    finish_sql.write_outcomes(conn, [finish_sql.Outcome(rows[0], tables.CANCELLED, now, values)], now)
    return 1
