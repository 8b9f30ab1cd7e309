"""Whether a listener expects to see each statement.

The driver-level paths of the single enqueue and the bulk COPY
(``postgresql._driver_rows``, ``mysql_session.driver_path``,
``db/single_insert.py``) skip SQLAlchemy's execution machinery; a listener
that must see the statement (SQL logging, ``echo``, tracing
instrumentation, a dialect's ``do_execute``) keeps them on SQLAlchemy's
path.  Other listeners do not count: jobtable's own ``handle_error``
(``db/clock.py``), registered on every PostgreSQL and MySQL engine, still
runs from SQLAlchemy's error handling, which those paths call.  (Counting
every listener, ``_has_events``, had sent every statement back to
SQLAlchemy's path -- and bulk enqueues off COPY -- since that listener came.)
"""

from __future__ import annotations

from typing import Any


def observed(dispatch: Any, echo: Any, dialect: Any) -> bool:
    """``dispatch``: a Connection's or an Engine's (ConnectionEvents)."""
    return bool(
        echo
        or dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or runs_statements(dialect)
    )


def runs_statements(dialect: Any) -> bool:
    """Dialect listeners that run statements themselves (``do_execute``)."""
    if not dialect._has_events:
        return False
    dispatch = dialect.dispatch
    return bool(dispatch.do_execute or dispatch.do_execute_no_params or dispatch.do_executemany or dispatch.do_setinputsizes)
