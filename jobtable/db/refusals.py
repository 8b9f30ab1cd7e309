"""When the database refuses a result row.

A write can fail in two ways that need opposite answers:

- the connection was lost (or the server is restarting, or a deadlock):
  the same write succeeds later, so the caller retries it as before;
- the database *refused the data* (a NUL byte PostgreSQL text cannot hold,
  a value too long, a check or trigger that says no): the same write fails
  forever, so retrying it would loop and block every result written with it.

``is_refusal`` tells them apart.  A refused batch is written again row by
row (``finish_each``), each row inside a savepoint, so the rows the database
accepts are written normally.  A row it still refuses is replaced by a note
(``refused_outcome``: the same attempt, its message naming why, built from
fixed text and the error's class and SQLSTATE only -- never SQL or
parameters); if even the note is refused the request row is removed alone,
so that the job that already ran is not run again, and the log says so.
Every path ends: nothing here loops.

The batched fast path (``finish_sql.finish``) pays nothing for this: only a batch
that failed takes the slow path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DataError, IntegrityError, NotSupportedError, ProgrammingError, StatementError

from .. import safetext
from . import finish_sql, tables
from .dialects import dialect_of

logger = logging.getLogger("jobtable.worker")

#: SQLSTATE classes of errors about the data itself: 22 data exception (NUL,
#: bad encoding, value too long), 23 integrity constraint violation (checks,
#: triggers raising check_violation), 54 program limit exceeded (a value over
#: PostgreSQL's 1 GB).  Class 42 (syntax, undefined table, no privilege) is a
#: configuration problem that a retry after the fix solves: not a refusal.
REFUSING_SQLSTATE_CLASSES = ("22", "23", "54")

#: error_type of the note that replaces a refused result.
REFUSED_TYPE = "jobtable.ResultRefused"


def is_refusal(exc: BaseException) -> bool:
    """True when writing the same data again cannot succeed."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            return sqlstate[:2] in REFUSING_SQLSTATE_CLASSES
        # No SQLSTATE: SQLite, or refused by the driver before it was sent
        # (psycopg refuses NUL in text, and types it cannot adapt).
        return isinstance(exc, (DataError, IntegrityError, ProgrammingError, NotSupportedError))
    # The driver could not encode a value (lone surrogates: UnicodeEncodeError)
    # or SQLAlchemy could not bind it.
    return isinstance(exc, (StatementError, UnicodeError, ValueError, TypeError, OverflowError))


def describe(exc: BaseException) -> str:
    """The error's class, SQLSTATE and condition name: enough to say why,
    with nothing of the statement or its values (which may be secret)."""
    parts = [safetext.type_name(type(exc)).rsplit(".", 1)[-1]]
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        parts.append(f"SQLSTATE {safetext.clean(sqlstate, 10)}")
    errorname = getattr(orig, "sqlite_errorname", None)
    if isinstance(errorname, str) and errorname:
        parts.append(safetext.clean(errorname, 60))
    if orig is not None:
        condition = safetext.type_name(type(orig)).rsplit(".", 1)[-1]
        if condition not in parts[0]:
            parts.append(condition)
    return ", ".join(parts)


def refused_outcome(outcome: finish_sql.Outcome, why: str) -> finish_sql.Outcome:
    """A note of fixed text standing for a result the database refused.

    A success becomes ERRORED (its return value is lost, and a caller
    waiting for it must hear so) and is not retried; a failure keeps its
    status and its retry.
    """
    started = outcome.fields.get("started_at", outcome.row.started_at)
    if outcome.status == tables.SUCCESSFUL:
        message = (
            f"The job ran and returned, but the database refused to store its result ({why}). "
            "jobtable stored this note instead; the job was not retried."
        )
        return finish_sql.Outcome(
            outcome.row,
            tables.ERRORED,
            outcome.ended_at,
            {"started_at": started, "error_type": REFUSED_TYPE, "error_message": message},
        )
    message = (
        f"The database refused to store this attempt's result ({why}); jobtable stored this note "
        f"instead. The attempt ended {outcome.status}; its error details are in the worker's log."
    )
    fields = {"started_at": started, "error_type": REFUSED_TYPE, "error_message": message}
    return replace(outcome, fields=fields)


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A savepoint inside the caller's transaction: a statement that fails
    inside undoes only what was done inside (PostgreSQL would otherwise
    abort the whole transaction)."""
    conn.exec_driver_sql("SAVEPOINT jobtable_row")
    try:
        yield
    except BaseException:
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT jobtable_row")
        raise
    conn.exec_driver_sql("RELEASE SAVEPOINT jobtable_row")


def _try_finish(conn: Connection, worker_id: str, outcome: finish_sql.Outcome, now: datetime) -> tuple[bool, str]:
    """(written, why not); errors that are not refusals propagate."""
    try:
        with savepoint(conn):
            finish_sql.finish(conn, worker_id, [outcome], now)
        return True, ""
    except Exception as exc:
        if not is_refusal(exc):
            raise
        return False, describe(exc)


def finish_each(conn: Connection, worker_id: str, outcomes: Sequence[finish_sql.Outcome], now: datetime) -> None:
    """``finish_sql.finish`` one outcome at a time, after the batch was refused.

    Runs inside the caller's (new) transaction; see the module docstring.
    """
    for outcome in outcomes:
        written, why = _try_finish(conn, worker_id, outcome, now)
        if written:
            continue
        row = outcome.row
        logger.error(
            "The database refused the result of %s %s attempt %s (%s): %s: %s. Storing a note instead.",
            row.task_name,
            row.task_id,
            row.attempt,
            why,
            safetext.clean(str(outcome.fields.get("error_type") or outcome.status), 255),
            safetext.clean(str(outcome.fields.get("error_message") or ""), 500),
        )
        written, also = _try_finish(conn, worker_id, refused_outcome(outcome, why), now)
        if written:
            continue
        with savepoint(conn):
            dialect_of(conn).take_running(conn, worker_id, [row.id])
        logger.error(
            "The database refused even the note for %s %s attempt %s (%s); its request row was removed "
            "without a result, so that the job, which ran, does not run again.",
            row.task_name,
            row.task_id,
            row.attempt,
            also,
        )


def backend_note(values: dict[str, Any], why: str) -> dict[str, Any]:
    """The Celery result backend's counterpart of ``refused_outcome``: the
    row it writes when its own row was refused (no meta: readers rebuild
    Celery's view from the columns)."""
    succeeded = values.get("status") == tables.SUCCESSFUL
    keep = ("task_id", "task_name", "queue", "attempt", "started_at", "ended_at", "worker_id")
    note = {key: values[key] for key in keep if key in values}
    note["status"] = tables.ERRORED if succeeded else values.get("status", tables.ERRORED)
    note["retried"] = False if succeeded else bool(values.get("retried"))
    note["error_type"] = REFUSED_TYPE
    note["error_message"] = (
        f"The database refused to store this task's result ({why}); jobtable stored this note instead."
    )
    note["return_value"] = note["traceback"] = note["meta"] = None
    return note
