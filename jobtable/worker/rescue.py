"""LOST jobs: members that died, and workers that stopped heartbeating.

What is rescued comes from the dead member's ledger (``ledger.py``): jobs it
had started are recorded LOST (never silently pending again), jobs it had
finished whose results were not written yet are recorded with the status
they ended with (SUCCESSFUL, ERRORED...: error type ``ResultLost``, their
return value or error details gone, never run again), jobs it had claimed
but not started go back to pending.  A job whose attempts killed
their worker process ``worker_quarantine_after`` times is QUARANTINED
instead: recorded, not retried, re-run only by hand.  A dead worker of
another machine has no readable ledger: all its running rows are LOST.

Every supervisor rescues on a timer.  ``dead_workers`` locks the rows it
picks (SKIP LOCKED on PostgreSQL; SQLite transactions hold the write lock),
so several workers rescuing at once never record a job LOST twice -- and the
guarded completion (``finish_sql.finish``) means a job declared LOST can never
write a second result if its worker was only slow, not dead.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from .. import badrows, safetext
from ..db import bindings_sql, finish_sql, rescue_sql, tables, workers_sql
from ..db.dialects import record_finished_pg
from ..db.rescue_pg import rescue_member_pg
from ..messages import decode_task
from . import dispatch, ledger
from .ledger import LedgerState

logger = logging.getLogger("jobtable.worker")


def retry_delay(row: Any) -> float:
    """``calculate_retry_delay(attempt)`` of a lost job, when this process
    knows its class; 0 otherwise (and when anything goes wrong)."""
    try:
        prepared = dispatch.prepare(decode_task(row.message))
        if prepared.retry_delay is None:
            return 0.0
        value = prepared.retry_delay(row.attempt)
        return value.total_seconds() if isinstance(value, timedelta) else float(value or 0)
    except Exception:
        return 0.0


def _log_lost(rows: list[Any], why: str, retry: bool = True) -> None:
    for row in rows:
        again = "; retrying" if retry and row.attempt <= row.retries else ""
        logger.warning("%s %s attempt %s LOST: %s%s", row.task_name, row.task_id, row.attempt, why, again)


def _quarantine_after(value: int | None) -> int:
    if value is not None:
        return value
    from ..settings import get_settings

    return get_settings().worker_quarantine_after


class Quarantine:
    """The QUARANTINED message for ``rescue_sql.lose``; remembers whom it quarantined."""

    def __init__(self, why: str, quarantine_after: int) -> None:
        self.why = why
        self.quarantine_after = quarantine_after
        self.task_ids: set[str] = set()

    def __call__(self, row: Any, times: int) -> str:
        self.task_ids.add(row.task_id)
        logger.error(
            "%s %s attempt %s QUARANTINED: its worker process died %d times (last: %s).",
            row.task_name, row.task_id, row.attempt, times, self.why,
        )
        return (
            f"Quarantined: this job killed its worker process {times} time{'' if times == 1 else 's'} "
            f"(JOBTABLE_WORKER_QUARANTINE_AFTER={self.quarantine_after}); it is not retried or claimed again. "
            f"Last time: {self.why}. Once fixed, run it again with `jobtable retry {row.task_id}` "
            "(or the Retry button of its dashboard page)."
        )

    def lost(self, rows: list[Any]) -> list[Any]:
        return [row for row in rows if row.task_id not in self.task_ids]


def _lost_text(status: str, why: str) -> str:
    lost = "return value was" if status == tables.SUCCESSFUL else "details (error, traceback) were"
    # clean: ``why`` is the supervisor's own text, but a NUL would make
    # PostgreSQL refuse the whole rescue.
    return safetext.clean(f"The job ended {status}; its {lost} lost: {why}. It was not run again.")


def _finished_fields(row: Any, status: str, why: str) -> dict[str, Any]:
    """The result columns of a finished attempt whose outcome died with its
    process, known only by its status."""
    if status == tables.DEAD_LETTER:
        # The verdict depends on the stored message alone: say it again.
        call = badrows.decode_call(row.message)
        if isinstance(call, badrows.BadRow):
            return badrows.dead_letter_fields(call.reason)
    return {"error_type": rescue_sql.RESULT_LOST, "error_message": _lost_text(status, why)}


def record_finished(
    conn: Connection, worker_id: str, statuses: dict[int, str], now: datetime, *, why: str
) -> int:
    """Record finished attempts whose results were not written with the
    status their outcome had (``statuses``: row id -> status), not retried.
    Only rows still running under ``worker_id`` are touched.  Returns how
    many were recorded."""
    if not statuses:
        return 0
    recorded = 0
    if conn.dialect.name == "postgresql":
        # The common case (a batch of finished jobs) in one statement that
        # copies the rows server-side; a dead letter's note is made from its
        # message, so those take the path below.
        plain = sorted(row_id for row_id, status in statuses.items() if status != tables.DEAD_LETTER)
        if plain:
            entries = [
                (row_id, statuses[row_id], rescue_sql.RESULT_LOST, _lost_text(statuses[row_id], why))
                for row_id in plain
            ]
            recorded += len(record_finished_pg(conn, worker_id, entries, now))
        statuses = {row_id: status for row_id, status in statuses.items() if status == tables.DEAD_LETTER}
        if not statuses:
            return recorded
    rows = rescue_sql.take_running(conn, worker_id, list(statuses))
    outcomes = [
        finish_sql.Outcome(row, statuses[row.id], now, _finished_fields(row, statuses[row.id], why)) for row in rows
    ]
    if outcomes:
        finish_sql.write_outcomes(conn, outcomes, now)
    return recorded + len(rows)


def _lose_started(
    conn: Connection,
    worker_id: str,
    state: LedgerState,
    now: datetime,
    *,
    why: str,
    why_finished: str,
    poison: bool,
    quarantine_after: int,
) -> int:
    """What a ledger knows: started and unfinished rows LOST (they may have
    killed the process: they count towards quarantine unless the operator
    stopped the worker); finished rows whose result was not written with
    their outcome's status when the ledger has it (else LOST), without
    running them again -- unless their outcome asked for a retry (LOST, and
    retried)."""
    quarantine = Quarantine(why, quarantine_after)
    lost = rescue_sql.lose(
        conn,
        worker_id,
        state.running,
        now,
        message=why,
        retry_delay=retry_delay,
        error_type=rescue_sql.WORKER_LOST if poison else rescue_sql.WORKER_STOPPED,
        quarantine_after=quarantine_after if poison else 0,
        quarantine_message=quarantine,
        requeue_once=dispatch.requeues_on_lost,
    )
    _log_lost(quarantine.lost(lost), why)
    known = {row_id: state.statuses[row_id] for row_id in state.finished if state.statuses.get(row_id)}
    recorded = record_finished(conn, worker_id, known, now, why=why_finished)
    if recorded:
        # One line, not one per job: a batch of no-ops can be a hundred.
        logger.warning("%d finished job(s) of %s recorded without their results: %s", recorded, worker_id, why_finished)
    done = rescue_sql.lose(
        conn, worker_id, [i for i in state.finished if i not in known], now, message=why_finished,
        error_type=rescue_sql.RESULT_LOST, retry=False,
    )
    _log_lost(done, why_finished, retry=False)
    again = rescue_sql.lose(
        conn, worker_id, state.finished_retry, now, message=why_finished, error_type=rescue_sql.RESULT_LOST,
        retry_delay=retry_delay,
    )
    _log_lost(again, why_finished)
    return len(lost) + recorded + len(done) + len(again)


def record_rows(
    conn: Connection,
    running: list[Any],
    finished: list[tuple[Any, str, bool]],
    now: datetime,
    *,
    why: str,
    why_finished: str,
    poison: bool,
    quarantine_after: int | None = None,
) -> int:
    """``_lose_started`` for attempts that have no request row: a routed
    member's (routing/lost.py), made from what its ledger kept.  ``running``
    were started and unfinished (LOST, retried, or QUARANTINED after
    ``quarantine_after`` kills: the same rules, ``rescue_sql.lose_rows``);
    ``finished``: (row, status, asked for a retry) of jobs that returned
    and whose result was not written.  Returns how many were recorded."""
    limit = _quarantine_after(quarantine_after)
    quarantine = Quarantine(why, limit)
    rescue_sql.lose_rows(
        conn, running, now, message=why, retry_delay=retry_delay,
        error_type=rescue_sql.WORKER_LOST if poison else rescue_sql.WORKER_STOPPED,
        quarantine_after=limit if poison else 0, quarantine_message=quarantine,
        requeue_once=dispatch.requeues_on_lost,
    )
    _log_lost(quarantine.lost(running), why)
    known = [(row, status) for row, status, again in finished if not again and status in tables.RESULT_STATUSES]
    if known:
        outcomes = [finish_sql.Outcome(row, status, now, _finished_fields(row, status, why_finished))
                    for row, status in known]
        finish_sql.write_outcomes(conn, outcomes, now)
        logger.warning("%d finished job(s) recorded without their results: %s", len(known), why_finished)
    unknown = [row for row, status, again in finished if not again and status not in tables.RESULT_STATUSES]
    rescue_sql.lose_rows(conn, unknown, now, message=why_finished, error_type=rescue_sql.RESULT_LOST, retry=False)
    _log_lost(unknown, why_finished, retry=False)
    again = [row for row, _status, retry in finished if retry]
    rescue_sql.lose_rows(
        conn, again, now, message=why_finished, error_type=rescue_sql.RESULT_LOST, retry_delay=retry_delay,
    )
    _log_lost(again, why_finished)
    return len(running) + len(finished)


def rescue_member(
    conn: Connection,
    worker_id: str,
    running_id: int,
    now: datetime,
    *,
    why: str,
    lose_running: bool = True,
    ledger: LedgerState | None = None,
    why_finished: str = "",
    poison: bool = True,
    quarantine_after: int | None = None,
) -> tuple[int, int]:
    """A member of ours ended: what it started and did not write is LOST
    (``ledger``: see ``_lose_started``; without one, its running job), the
    jobs it had claimed but not started go back to pending, its row goes.
    Returns (lost, released)."""
    limit = _quarantine_after(quarantine_after)
    if _one_statement(conn, ledger):
        assert ledger is not None
        return _rescue_member_pg(
            conn, worker_id, ledger, now, why=why,
            why_finished=why_finished or f"{why} (after the job had finished, before its result was written)",
            poison=poison, quarantine_after=limit,
        )
    if ledger is not None and ledger.complete:
        lost = _lose_started(
            conn,
            worker_id,
            ledger,
            now,
            why=why,
            why_finished=why_finished or f"{why} (after the job had finished, before its result was written)",
            poison=poison,
            quarantine_after=limit,
        )
    else:
        rows: list[Any] = []
        if running_id and lose_running:
            quarantine = Quarantine(why, limit)
            rows = rescue_sql.lose(
                conn, worker_id, [running_id], now, message=why, retry_delay=retry_delay,
                error_type=rescue_sql.WORKER_LOST if poison else rescue_sql.WORKER_STOPPED,
                quarantine_after=limit if poison else 0, quarantine_message=quarantine,
                requeue_once=dispatch.requeues_on_lost,
            )
            _log_lost(quarantine.lost(rows), why)
        lost = len(rows)
    released = finish_sql.release(conn, worker_id, None)
    workers_sql.delete_workers(conn, [worker_id])
    return lost, released


def _one_statement(conn: Connection, ledger: LedgerState | None) -> bool:
    """Whether ``rescue_member_pg`` covers what ``ledger`` says: PostgreSQL,
    a complete ledger whose finished rows all have a status that is not a
    dead letter's (its note is made from the message) and asked no retry."""
    return (
        conn.dialect.name == "postgresql"
        # A runner that may run a lost attempt again (Celery's acks_late +
        # reject_on_worker_lost) decides per row: the statement cannot ask it.
        and not dispatch.REQUEUE_ON_LOST
        and ledger is not None
        and ledger.complete
        and not ledger.finished_retry
        and all(ledger.statuses.get(i) not in ("", None, tables.DEAD_LETTER) for i in ledger.finished)
    )


def _rescue_member_pg(
    conn: Connection,
    worker_id: str,
    ledger: LedgerState,
    now: datetime,
    *,
    why: str,
    why_finished: str,
    poison: bool,
    quarantine_after: int,
) -> tuple[int, int]:
    """``rescue_member`` in one statement (``db/rescue_pg.py``), then the
    started rows it left (a retry left, or due for quarantine) the general way."""
    error_type = rescue_sql.WORKER_LOST if poison else rescue_sql.WORKER_STOPPED
    finished = [(i, ledger.statuses[i], _lost_text(ledger.statuses[i], why_finished)) for i in ledger.finished]
    done = rescue_member_pg(
        conn, worker_id, ledger.running, finished, now, why=why, error_type=error_type,
        result_lost=rescue_sql.RESULT_LOST, worker_lost=rescue_sql.WORKER_LOST,
        quarantine_after=quarantine_after if poison else 0,
    )
    for _row_id, task_name, task_id, attempt in done.lost:
        logger.warning("%s %s attempt %s LOST: %s", task_name, task_id, attempt, why)
    if done.finished:
        logger.warning(
            "%d finished job(s) of %s recorded without their results: %s", done.finished, worker_id, why_finished
        )
    lost = len(done.lost) + done.finished
    if done.left:
        quarantine = Quarantine(why, quarantine_after)
        rows = rescue_sql.lose(
            conn, worker_id, done.left, now, message=why, retry_delay=retry_delay, error_type=error_type,
            quarantine_after=quarantine_after if poison else 0, quarantine_message=quarantine,
        )
        _log_lost(quarantine.lost(rows), why)
        lost += len(rows)
    return lost, done.released


def rescue_worker(
    conn: Connection, worker_id: str, now: datetime, *, why: str, quarantine_after: int | None = None
) -> int:
    """Rescue the rows of one dead worker.  With its ledger (a worker of this
    machine): exactly -- started ones LOST, unstarted ones pending again.
    Without (another host, or the file is gone or damaged): every running
    row LOST, retried when it has retries left."""
    limit = _quarantine_after(quarantine_after)
    state = ledger.read(worker_id)
    if state is not None:
        lost = _lose_started(
            conn,
            worker_id,
            state,
            now,
            why=f"{why}, while running the job",
            why_finished=f"{why}, after the job had finished and before its result was written",
            poison=True,
            quarantine_after=limit,
        )
        released = finish_sql.release(conn, worker_id, None)
        if released:
            logger.warning("Gave back %d job(s) that %s had claimed but not started.", released, worker_id)
        return lost
    why = f"{why}; which of its claimed jobs had started is unknown here (no ledger on this machine)"
    quarantine = Quarantine(why, limit)
    rows = rescue_sql.lose(
        conn, worker_id, None, now, message=why, retry_delay=retry_delay,
        quarantine_after=limit, quarantine_message=quarantine, requeue_once=dispatch.requeues_on_lost,
    )
    _log_lost(quarantine.lost(rows), why)
    return len(rows)


def _remove_control_nodes(conn: Connection, dead: list[str]) -> None:
    """Dead workers' remote-control queues (``jobtable worker --celery-app``
    binds one per supervisor): unbound, their waiting messages deleted, once
    no member of that supervisor is left."""
    nodes = set()
    for worker_id in dead:
        parts = worker_id[len(workers_sql.NATIVE_PREFIX):].rsplit(":", 3)
        if worker_id.startswith(workers_sql.NATIVE_PREFIX) and len(parts) == 4 and parts[1].isdigit():
            nodes.add((parts[0], int(parts[1])))
    alive = {(row.hostname, row.pid) for row in workers_sql.native_workers(conn)}
    gone = sorted(nodes - alive)
    if gone and bindings_sql.remove_nodes(conn, gone):
        logger.info("Removed the remote-control queues of %d dead worker(s).", len(gone))


def rescue_dead(conn: Connection, lost_after: float, now: datetime, *, quarantine_after: int | None = None) -> int:
    """Rescue (``rescue_worker``) the rows of native workers silent for
    ``lost_after`` seconds (and of ids with no worker row at all); returns
    how many rows were recorded LOST."""
    before = now - timedelta(seconds=lost_after)
    total = 0
    dead = rescue_sql.dead_workers(conn, before)
    for worker_id in dead:
        why = f"worker {worker_id} stopped sending heartbeats (none for {lost_after:g} s)"
        total += rescue_worker(conn, worker_id, now, why=why, quarantine_after=quarantine_after)
    workers_sql.delete_workers(conn, dead)
    _remove_control_nodes(conn, dead)
    for worker_id in rescue_sql.orphan_workers(conn, before):
        why = f"worker {worker_id} has no heartbeat row"
        total += rescue_worker(conn, worker_id, now, why=why, quarantine_after=quarantine_after)
    return total


def rescue_known_dead(
    conn: Connection, worker_ids: list[str], now: datetime, *, why: str, quarantine_after: int | None = None
) -> int:
    """Rescue (``rescue_worker``: exactly, from its ledger, when the worker
    ran on this machine) the rows of native workers known to be dead now
    (see ``liveness.py``), without waiting for their heartbeat to age."""
    total = 0
    dead = workers_sql.lock_workers(conn, worker_ids)
    for worker_id in dead:
        total += rescue_worker(conn, worker_id, now, why=f"worker {worker_id} {why}", quarantine_after=quarantine_after)
    workers_sql.delete_workers(conn, dead)
    _remove_control_nodes(conn, dead)
    return total
