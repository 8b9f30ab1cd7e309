"""Rate limit tokens in ``jobtable_rate_limit``, and rows sent back to wait for one.

A limit of ``r`` per second lets one attempt of a task name start every
``1/r`` seconds, across every worker and host using the database (a burst
of one, as Celery's per-worker token bucket of capacity 1).  The row of a
key holds ``taken_at``, when its last token was taken.  A take is one
conditional UPDATE::

    UPDATE jobtable_rate_limit SET taken_at = :now
    WHERE name = :key AND (taken_at <= :now - 1/r OR taken_at > :now + 60 s)

Row locks decide between racing takers on PostgreSQL and MySQL (the loser
waits for the winner's commit, then sees its ``taken_at`` and matches
nothing), the write lock on SQLite; so the ``:now`` of successive takes, in
commit order, are at least ``1/r`` apart, even when a taker's ``:now`` is
older than the winner's (it waited for the lock).  The interval is the
caller's, so a changed limit applies from the next take.  The second arm
frees a key whose ``taken_at`` was stamped by a clock far ahead (a failover
to a server whose clock was wrong).  ``:now`` is ``clock.utcnow()``, the
database's clock (``db/clock.py``).

A rate set by Celery's remote control (``app.control.rate_limit``) is stored
in the key's ``rate`` column (``set_rate``); each worker's supervisor reads
those rates (``overrides``) every ``OVERRIDES_TTL`` seconds and has its
members re-read them when they changed; they replace the code's limit of
that name.

The rows of a claim that found no token go back to ``scheduled`` at the
token's time (``defer``): the attempt is not counted (``attempt``,
``retries`` and the message are untouched) and the row keeps its id and
priority, so it is claimed in the same order once due.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.engine import Connection

from . import tables
from .dialects import dialect_of, wake_queues

rate_limit = tables.rate_limit
request = tables.request


#: How often a worker's supervisor looks for rates set by remote control (worker/duties.py).
OVERRIDES_TTL = 1.0

#: A ``taken_at`` further ahead than this was not stamped by a live clock.
FUTURE_SLACK = timedelta(seconds=60)


#: Deadlock codes: MySQL/MariaDB 1213 (and lock wait timeout 1205), SQLSTATE
#: 40001/40P01.  Racing first takes of a new key (the UPDATE's gap lock and
#: the INSERT) can deadlock on MariaDB; the loser's transaction is rolled
#: back whole, so its caller takes again in a new one (``deadlocked``).
_DEADLOCKS = {1213, 1205, "40001", "40P01"}


def deadlocked(exc: BaseException) -> bool:
    """Whether ``exc`` (a SQLAlchemy DBAPIError) is a deadlock the caller may
    retry in a new transaction."""
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ()) or ()
    return bool(args and args[0] in _DEADLOCKS) or getattr(orig, "sqlstate", None) in _DEADLOCKS


def take(conn: Connection, name: str, interval: float, now: datetime) -> datetime | None:
    """Take the token of ``name`` (one per ``interval`` seconds) at ``now``.

    None: taken, the caller may start one attempt.  Otherwise when the next
    token is due (later than ``now``).  Call inside a transaction (or in
    autocommit, where each statement is one)."""
    spacing = timedelta(seconds=interval)
    for _ in range(3):
        taken = conn.execute(
            update(rate_limit)
            .where(
                rate_limit.c.name == name,
                or_(rate_limit.c.taken_at <= now - spacing, rate_limit.c.taken_at > now + FUTURE_SLACK),
            )
            .values(taken_at=now)
        ).rowcount
        if taken:
            return None
        last = conn.execute(select(rate_limit.c.taken_at).where(rate_limit.c.name == name)).scalar()
        if last is None:
            # The key's first token ever: whoever inserts the row has it.
            if dialect_of(conn).insert_new(conn, rate_limit, {"name": name, "taken_at": now}):
                return None
            continue
        due: datetime = last + spacing
        if due > now and last <= now + FUTURE_SLACK:
            return due
        # The token came free between the two statements: try again.
    return now + spacing


def take_retrying(
    conn: Connection, transaction: Callable[[], AbstractContextManager[object]], name: str, interval: float,
    now: datetime,
) -> datetime | None:
    """``take`` inside ``transaction()``, taken again in a new one (twice at
    most) when the database chose it as a deadlock's victim (``deadlocked``):
    the victim's transaction was rolled back whole, so nothing was taken."""
    for tries_left in (2, 1, 0):
        try:
            with transaction():
                return take(conn, name, interval, now)
        except Exception as exc:
            if not tries_left or not deadlocked(exc):
                raise
    raise AssertionError("unreachable: the last try returns or raises")


def defer(conn: Connection, worker_id: str, rows: Sequence[tuple[int, str, datetime]]) -> int:
    """Put claimed rows ``(id, queue, run_at)`` that found no token back to
    ``scheduled`` at ``run_at``, if they are still this worker's.  The
    waiting workers of their queues are woken (they learn the new due
    time).  Returns how many went back."""
    if not rows:
        return 0
    stmt = (
        update(request)
        .where(
            request.c.id == bindparam("b_id"),
            request.c.worker_id == worker_id,
            request.c.state == tables.RUNNING,
        )
        .values(
            state=tables.SCHEDULED,
            run_at=bindparam("b_run_at"),
            worker_id=None,
            started_at=None,
            lease_expires_at=None,
        )
    )
    result = conn.execute(stmt, [{"b_id": row_id, "b_run_at": run_at} for row_id, _queue, run_at in rows])
    wake_queues(conn, sorted({queue for _id, queue, _run_at in rows}))
    return max(0, result.rowcount or 0)


#: ``taken_at`` of a row made by ``set_rate`` before any take: long past, so
#: the first take finds the token free.
NEVER_TAKEN = datetime(2000, 1, 1, tzinfo=timezone.utc)


def set_rate(conn: Connection, name: str, rate: float) -> None:
    """Celery's ``app.control.rate_limit(name, ...)``: ``rate`` tokens per
    second (0: no limit) replace the code's limit of ``name`` on every
    worker (``overrides``).  The key's last token is kept."""
    for _ in range(3):
        if conn.execute(update(rate_limit).where(rate_limit.c.name == name).values(rate=rate)).rowcount:
            return
        if dialect_of(conn).insert_new(conn, rate_limit, {"name": name, "taken_at": NEVER_TAKEN, "rate": rate}):
            return
    raise RuntimeError(f"The rate limit row of {name!r} could not be written.")


def overrides(conn: Connection) -> dict[str, float]:
    """The rates set by remote control: name -> tokens per second (0: no limit)."""
    rows = conn.execute(select(rate_limit.c.name, rate_limit.c.rate).where(rate_limit.c.rate.is_not(None)))
    return {str(row.name): float(row.rate) for row in rows}


def forget(conn: Connection, names: Sequence[str]) -> int:
    """Remove the token rows of ``names`` (a limit dropped, tests)."""
    if not names:
        return 0
    return conn.execute(rate_limit.delete().where(rate_limit.c.name.in_(list(names)))).rowcount or 0
