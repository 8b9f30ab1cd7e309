"""Waiting for a job's final result (``wait_for``, ``request.wait()`` in
records.py): woken by the result table's NOTIFY on PostgreSQL and by SQLite's
data version (``db/notify.Listener``), and reading again every ``WAIT_CAP``
seconds in case a notification was missed.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy.engine import Connection, Row

from .db import engine as db_engine
from .db import reads_sql, tables
from .db.notify import Listener
from .exceptions import JobNotFound
from .record_queries import reading

#: Longest single wait between two looks at the database in ``wait()``: a
#: notification can be missed (PgBouncer in transaction mode, a reconnect),
#: so the result is read again at least this often.
WAIT_CAP = 5.0


def _checked_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"wait(timeout={timeout!r}): give seconds as a number, or None to wait without limit.")
    if math.isnan(timeout):
        raise ValueError("wait(timeout=nan): give seconds as a number, or None to wait without limit.")
    if math.isinf(timeout):
        raise ValueError(f"wait(timeout={timeout!r}): use timeout=None to wait without limit.")
    if timeout < 0:
        raise ValueError(f"wait(timeout={timeout!r}): the timeout must be 0 (look once) or more seconds.")
    return float(timeout)


def _final_result(conn: Connection, uuid: str) -> Row[Any] | None:
    """The job's last result if it has finished for good, else None.

    The request is read before the result: a job with neither (at the time
    of each read) is unknown, since a running job's result and the end of
    its request are one commit.  A result marked ``retried`` whose retry is
    gone (purged) is final too."""
    if reads_sql.active_request(conn, uuid) is not None:
        return None
    latest = reads_sql.latest_result(conn, uuid)
    if latest is None:
        raise JobNotFound(f"No job has uuid {uuid} (neither waiting, running nor finished).")
    if latest.retried:
        if reads_sql.active_request(conn, uuid) is not None:
            return None
        latest = reads_sql.latest_result(conn, uuid) or latest
    return latest


def final_row(uuid: str, timeout: float | None = None) -> Row[Any]:
    """Block until job ``uuid`` has finished for good -- its retries too --
    and return its last result row (whatever its status); ``records.wait_for``
    tells the rules."""
    limit = _checked_timeout(timeout)
    deadline = None if limit is None else time.monotonic() + limit
    engine = db_engine.get_engine()
    listener: Listener | None = None
    try:
        while True:
            with reading(engine) as conn:
                row = _final_result(conn, uuid)
            if row is not None:
                return row
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"Job {uuid} has not finished within {timeout} s.")
            if listener is None:
                # Listening before the next read: a result written between
                # that read and the wait still wakes us.
                listener = Listener.create(engine, [], channel=tables.RESULT_CHANNEL)
                continue
            listener.wait(WAIT_CAP if remaining is None else min(remaining, WAIT_CAP))
    finally:
        if listener is not None:
            listener.close()
