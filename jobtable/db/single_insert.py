"""One request row in one round trip: the single enqueue's INSERT on
PostgreSQL with psycopg (issue 13).

What a web request pays for ``Job(...).run_in_worker()`` is one durable
commit plus the client's own CPU.  The commit is PostgreSQL's; this module
cuts the rest to what cannot be avoided: a pooled driver connection checked
out, one server-side prepared ``INSERT ... RETURNING`` sent with its
parameters (Bind/Execute/Sync: one round trip), the connection checked back
in.  Nothing of SQLAlchemy's execution machinery runs per call (its
``Connection``, execution context and result set-up cost more client time
than psycopg takes to send the statement).

- **Autocommit**: the INSERT commits itself (no BEGIN, no COMMIT, and the
  pool's reset at check-in finds no transaction to roll back).
- **NOTIFY**: the statement's CTE runs ``pg_notify`` for the row's queue,
  delivered at its commit: idle workers wake without a second statement.
- **Prepared once per driver connection**: psycopg keeps the prepared
  statement with its connection (``prepare=True``); a new connection after
  a reconnect prepares it again on first use.  Behind a transaction pooler
  (``database_pooler``) nothing is prepared: the pooler's next
  transaction may run on another server connection (see ``engine.py``).
- **Errors** are SQLAlchemy's, as on its own path: wrapped in
  ``DBAPIError``; a disconnect invalidates the connection and the pool's
  older ones, with ``connection_invalidated`` set, so the caller's one retry
  (``db/retry.py``) gets a fresh connection.

``usable(engine)`` says when this path applies: PostgreSQL through psycopg,
and no listener that must see each statement (SQL logging, ``echo``,
tracing instrumentation), which SQLAlchemy's own path keeps serving.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from . import clock
from . import engine as db_engine
from .dialects.base import NOTIFY_CHANNEL
from .dialects.observed import observed

#: The columns of a new request row, in the statement's parameter order.
COLUMNS = (
    "task_id", "task_name", "queue", "priority", "state", "run_at", "expires_at", "concurrency_key",
    "unique_key", "attempt", "retries", "created_at", "message",
)
_CASTS = {
    "task_id": "varchar", "task_name": "varchar", "queue": "varchar", "priority": "int2", "state": "varchar",
    "run_at": "timestamptz", "expires_at": "timestamptz", "concurrency_key": "varchar", "unique_key": "varchar",
    "attempt": "int4", "retries": "int4", "created_at": "timestamptz", "message": "text",
}
#: Positional parameters (a tuple binds with less work than a dict of names).
SQL = (
    f"WITH ins AS (INSERT INTO jobtable_request ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'%s::{_CASTS[c]}' for c in COLUMNS)}) "
    "ON CONFLICT DO NOTHING RETURNING id, task_id, queue) "
    f"SELECT ins.id, pg_notify('{NOTIFY_CHANNEL}', ins.queue) FROM ins"
)

#: The key of a driver connection's cursor in its pool record's ``info``.
_CURSOR = "jobtable.single_insert.cursor"
#: Per engine: None when this path does not apply, else whether to prepare.
_usable: weakref.WeakKeyDictionary[Engine, bool | None] = weakref.WeakKeyDictionary()


def usable(engine: Engine) -> bool:
    """Whether ``insert`` may write ``engine``'s single rows."""
    prepare = _usable.get(engine, False)
    if prepare is False and engine not in _usable:
        prepare = _usable[engine] = _decide(engine)
    return prepare is not None and not _observed(engine)


def _decide(engine: Engine) -> bool | None:
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None
    return not db_engine.is_pooled(engine)


def _observed(engine: Engine) -> bool:
    # Checked per call: listeners may be added at any time.
    return observed(engine.dispatch, engine.echo, engine.dialect)


_COLUMN_SET = frozenset(COLUMNS)


def fits(row: dict[str, Any]) -> bool:
    """Whether ``row`` has no column besides the statement's (a row built
    by ``checked_row`` has exactly those)."""
    return row.keys() <= _COLUMN_SET


def params_of(row: dict[str, Any]) -> tuple[Any, ...]:
    """The statement's parameters for ``row`` (a ``checked_row``'s columns),
    its unique key aligned as ``enqueue_sql.insert_requests`` does."""
    key = row.get("concurrency_key")
    unique = row.get("unique_key", key)
    row["unique_key"] = key if key is not None and unique is not None else None
    return tuple([row.get(column) for column in COLUMNS])


def insert(engine: Engine, row: dict[str, Any]) -> int | None:
    """Insert ``row`` in its own transaction, one round trip: its id, or
    None when a conflict skipped it.  Raises ``DBAPIError``."""
    params = params_of(row)
    prepare = bool(_usable.get(engine))
    try:
        fairy = engine.raw_connection()
    except sa_exc.DBAPIError as exc:
        raise db_engine.unavailable(engine, exc) from exc
    driver: Any = fairy.driver_connection
    cursor = None
    try:
        try:
            # Set per checkout, not kept: the pool's other users expect
            # transactions.  No round trip: psycopg only records it.
            driver.autocommit = True
            # One cursor per driver connection, kept with it: a new one per
            # call set up psycopg's adapters again (a sixth of the call).
            cursor = fairy.info.get(_CURSOR)
            if cursor is None or cursor.closed or cursor.connection is not driver:
                cursor = fairy.info[_CURSOR] = driver.cursor()
            cursor.execute(SQL, params, prepare=prepare)
            found = cursor.fetchone()
        except Exception as exc:
            _raise(engine, fairy, exc, cursor, params)
            raise
        finally:
            if fairy.is_valid:
                try:
                    driver.autocommit = False
                except Exception:  # a broken connection: never reused
                    fairy.invalidate()
    finally:
        fairy.close()
    return None if found is None else int(found[0])


def _raise(engine: Engine, fairy: Any, exc: Exception, cursor: Any, params: Sequence[Any]) -> None:
    """Raise ``exc`` as SQLAlchemy's own path would have: a driver error
    wrapped in ``DBAPIError``, a disconnect invalidating the connection and
    the pool's older ones.  Other exceptions are left to the caller."""
    dbapi = engine.dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return
    disconnect = engine.dialect.is_disconnect(exc, fairy.driver_connection, cursor)
    if disconnect:
        clock.lost_connection()  # as the engine's handle_error listener does
        fairy.invalidate(exc)
        engine.pool._invalidate(fairy, exc)
    raise sa_exc.DBAPIError.instance(
        SQL, list(params), exc, dbapi.Error, connection_invalidated=disconnect, dialect=engine.dialect
    ) from exc
