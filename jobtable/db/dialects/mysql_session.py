"""MySQL/MariaDB sessions (issue 17): single statements in autocommit mode,
and the pool's reset that an autocommit connection does not need.

Engine-level, not part of the Dialect interface: ``engine._create_mysql_engine``
installs the events, ``retry.write_retrying`` opens ``autocommit()`` blocks,
and ``mysql.MysqlDialect.insert_requests`` runs on the driver when
``driver_path`` allows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from .observed import observed


# -- the session: single statements in autocommit, the pool's reset --
#
# A single enqueue is one INSERT.  In a transaction it costs three round
# trips: the INSERT, the COMMIT, and the pool's ROLLBACK when the connection
# goes back.  In autocommit mode it is one: the INSERT commits itself
# (durably, as a COMMIT would), and a connection that ran only autocommit
# statements has no transaction for the pool to roll back.  mysqlclient
# switches autocommit with a round trip (``SET autocommit``) and only when
# the mode changes, so the switch is lazy both ways: ``autocommit()`` turns
# it on (free when the connection's previous user was a single enqueue too),
# and the first transaction of a later user turns it off (``_on_begin``).

#: ``conn.info`` keys (the pooled connection's): inside ``autocommit()``;
#: returned by it with no transaction open (the pool's reset may skip).
_AUTOCOMMIT = "jobtable_mysql_autocommit"
_CLEAN = "jobtable_mysql_clean"


def install_session_events(engine: Engine) -> None:
    """For an engine created with ``pool_reset_on_return=None``: the reset
    (a ROLLBACK) is this module's ``_on_reset``, and every transaction
    starts with the driver out of autocommit (``_on_begin``)."""
    event.listen(engine, "begin", _on_begin)
    event.listen(engine, "reset", _on_reset)


def _on_begin(conn: Connection) -> None:
    # SQLAlchemy's MySQL dialect begins implicitly (no BEGIN is sent): the
    # driver must be out of autocommit mode for the transaction to be one.
    # Not inside autocommit() (its statements commit themselves), nor on a
    # connection asked for isolation_level="AUTOCOMMIT" (SQLAlchemy's own).
    if conn.info.get(_AUTOCOMMIT) or conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    dbapi: Any = conn.connection.dbapi_connection
    if dbapi.get_autocommit():  # the server status of the last reply: no round trip
        try:
            dbapi.autocommit(False)
        except conn.dialect.loaded_dbapi.Error as exc:
            # A dropped connection: DBAPIError, invalidated (retry.py's case).
            conn._handle_dbapi_exception(exc, None, None, None, None)


def _on_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
    """The pool's rollback at check-in (SQLAlchemy's, which the engine turns
    off), skipped only for a connection that ``autocommit()`` returned clean
    and is still in autocommit mode: no statement since could have begun a
    transaction.  Any other connection -- one returned inside a transaction
    above all -- is rolled back as before.  An error here makes SQLAlchemy
    discard the connection, as its own reset does."""
    clean = record.info.pop(_CLEAN, False) if record is not None else False
    if state.transaction_was_reset or not state.asyncio_safe:
        return  # the Connection rolled back itself (or cannot here)
    if clean and dbapi_connection.get_autocommit():
        return
    dbapi_connection.rollback()


@contextmanager
def autocommit(conn: Connection) -> Iterator[None]:
    """Each statement of the block commits itself (``retry.write_retrying``
    for a single-statement write).  The driver stays in autocommit mode
    after the block: the next transaction on the connection turns it off."""
    dbapi: Any = conn.connection.dbapi_connection
    try:
        dbapi.autocommit(True)  # a round trip only when it was off
    except conn.dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, None, None, None, None)
    conn.info[_AUTOCOMMIT] = True
    done = False
    try:
        yield
        done = True
    finally:
        # An invalidated connection (dropped by the server) is not touched:
        # conn.info would check out a new one; its record's info is
        # cleared when it reconnects.
        if not conn.invalidated:
            conn.info.pop(_AUTOCOMMIT, None)
            # A statement that went through SQLAlchemy began a transaction of
            # its own (autocommitted on the server): the Connection rolls that
            # back at close and tells the pool so; nothing to mark then.
            if done and not conn.in_transaction():
                conn.info[_CLEAN] = True


def driver_path(conn: Connection) -> bool:
    """Whether a statement may run on mysqlclient directly: inside
    ``autocommit()`` or a transaction already begun (a commit-as-you-go
    connection outside one must see SQLAlchemy begin it, for the caller's
    ``commit()``), and with nothing listening to statements (SQL logging,
    ``echo``, tracing instrumentation see them as before)."""
    if not (conn.info.get(_AUTOCOMMIT) or conn.in_transaction()):
        return False
    return not observed(conn.dispatch, conn._echo, conn.dialect)


class _Inserted(NamedTuple):
    id: int
    task_id: str


def driver_rows(conn: Connection, statement: bytes, *, returns: bool = True) -> list[Any]:
    """The rows of ``statement`` (literal values, nothing to format), run on
    mysqlclient's cursor: SQLAlchemy's execution context and result set-up
    cost more client time than the INSERT of a single enqueue.  Errors go
    through SQLAlchemy's handling -- ``DBAPIError``, a dropped connection
    invalidated with its pool, which ``db/retry.py`` relies on -- naming the
    statement without its values (job arguments have no place in an error
    message or a log)."""
    dbapi: Any = conn.connection.dbapi_connection
    cursor = None
    try:
        cursor = dbapi.cursor()
        cursor.execute(statement)
        rows = [_Inserted(*row) for row in cursor.fetchall()] if returns else []
        cursor.close()
        return rows
    except BaseException as exc:
        if isinstance(exc, conn.dialect.loaded_dbapi.Error) or not isinstance(exc, Exception):
            shown = statement.split(b" VALUES ", 1)[0].decode("ascii", "replace") + " VALUES (...)"
            conn._handle_dbapi_exception(exc, shown, None, cursor, None)
        raise


def encoding_of(conn: Connection) -> str:
    """The Python name of the connection's character set (mysqlclient's)."""
    dbapi: Any = conn.connection.dbapi_connection
    return str(dbapi.encoding)
