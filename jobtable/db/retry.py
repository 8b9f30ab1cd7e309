"""One safe retry of a write whose pooled connection the database dropped.

After PostgreSQL restarts (or ``pg_terminate_backend``), every connection
in a process's pool is dead, and the first statement sent on one fails
(``AdminShutdown``, "server closed the connection").  SQLAlchemy then marks
the connection invalidated (``DBAPIError.connection_invalidated``) and
recycles the rest of the pool, so a second attempt gets a fresh connection.

Why a retry instead of a pre-ping: a pre-ping costs a round trip on every
checkout, and the single enqueue is one round trip in all.  The retry costs
nothing until a connection actually died.

Why a retry never writes twice: the caller's ``write(conn, retrying)`` is
told when it runs again, and then first looks for what the first attempt may
have committed (by task id, unique per enqueue; result writes are upserts on
``(task_id, attempt)``, so they are idempotent anyway).  The first attempt's
outcome is unknown only if the connection died after its COMMIT (or its
autocommit statement) was sent; PostgreSQL ends a dead connection's backend,
which either committed before it ended -- the rows are then visible to the
second attempt -- or rolls back.  Only disconnects are retried, once; any
other error, or a second disconnect, reaches the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from . import engine as db_engine
from .dialects import mysql_session

logger = logging.getLogger("jobtable.db")

T = TypeVar("T")


def is_disconnect(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def write_retrying(
    engine: Engine,
    write: Callable[[Connection, bool], T],
    *,
    autocommit: bool = False,
    check: bool = True,
    retried: bool = False,
) -> T:
    """Run ``write(conn, retrying)`` in a transaction (or, with
    ``autocommit`` on PostgreSQL and MariaDB, as its own single-statement
    transaction), once more on a fresh connection if the first one had been
    dropped.  MySQL 8 keeps the transaction: without RETURNING its insert
    is a statement per row (``MysqlDialect.insert_requests``); so does any
    driver but mysqlclient (PyMySQL), whose inserts take that path too.
    ``retried``: the first attempt was the caller's own and its connection
    died: only the retry runs (``write(conn, True)``)."""
    for retrying in (True,) if retried else (False, True):
        try:
            with db_engine.connect(engine, check=check) as conn:
                if autocommit and engine.dialect.name == "postgresql":
                    with _autocommit(conn):
                        return write(conn, retrying)
                if autocommit and engine.dialect.name == "mysql" and engine.dialect.insert_returning and (
                    engine.dialect.driver == "mysqldb"
                ):
                    with mysql_session.autocommit(conn):
                        return write(conn, retrying)
                with conn.begin():
                    return write(conn, retrying)
        except DBAPIError as exc:
            if retrying or not is_disconnect(exc):
                raise
            log_retry(exc)
    raise AssertionError("unreachable")  # pragma: no cover


def log_retry(exc: DBAPIError) -> None:
    logger.info(
        "The database dropped a pooled connection (%s); retrying once on a new one.",
        str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__,
    )


@contextmanager
def _autocommit(conn: Connection) -> Iterator[None]:
    """Each statement of the block its own transaction (PostgreSQL, psycopg).

    Set on the driver's connection, as a single enqueue's costs go: asking
    SQLAlchemy for it (``isolation_level="AUTOCOMMIT"``) switches the
    connection's characteristics at checkout and back at checkin, which cost
    more client time than the INSERT it wraps.  The pooled connection goes
    back to the pool as it came (not autocommit) -- or, if that cannot be
    restored, is discarded rather than handed to the next user in
    autocommit mode.  SQLAlchemy's own transaction bookkeeping is untouched:
    its implicit BEGIN is the driver's, which autocommit skips, and its
    rollback at close finds nothing to roll back.
    """
    driver = conn.connection.driver_connection
    try:
        driver.autocommit = True  # type: ignore[union-attr]
    except conn.dialect.loaded_dbapi.Error as exc:
        # A connection psycopg already knows to be closed: SQLAlchemy's
        # handling wraps it in DBAPIError and, for a disconnect, marks it
        # (and the pool) invalidated, so the retry gets a fresh one.
        conn._handle_dbapi_exception(exc, None, None, None, None)
    try:
        yield
    finally:
        if not conn.invalidated:
            try:
                driver.autocommit = False  # type: ignore[union-attr]
            except Exception:  # a broken connection: never reused
                conn.invalidate()
