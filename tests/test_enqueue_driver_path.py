"""The single enqueue's driver-level path (PostgreSQL, MariaDB): what it must not change.

``db/retry._autocommit`` and ``dialects/postgresql._driver_rows`` run the
single enqueue on psycopg directly (``dialects/mysql_session`` on
mysqlclient: test_mysql_dialect.py has its round trips); these tests hold
them to SQLAlchemy's behaviour: a connection goes back to the pool as it
came, a caller's commit-as-you-go connection commits the job with the
caller, and execution events still see the statement.  (A dropped
connection: test_liveness.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from jobtable.db import tables
from jobtable.db.engine import get_engine

from tests.sample_jobs import Echo

PG_ONLY = pytest.mark.parametrize("dialect", ["postgresql"])
DRIVER_PATHS = pytest.mark.parametrize("dialect", ["postgresql", "mysql"])


def _count() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.request)).scalar_one())


@PG_ONLY
def test_the_pooled_connection_is_not_left_in_autocommit(db_url: str) -> None:
    engine = get_engine()
    assert Echo("a").run_in_worker() is not None
    # The pool now holds the connection the enqueue used: a transaction on
    # it must still roll back.
    with engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
        conn.execute(tables.request.delete())
        conn.rollback()
    assert _count() == 1


@DRIVER_PATHS
def test_commit_as_you_go_connection_commits_the_job_with_the_caller(db_url: str) -> None:
    with get_engine().connect() as conn:
        assert not conn.in_transaction()
        assert Echo("kept").run_in_worker(connection=conn) is not None
        conn.commit()
        assert Echo("dropped").run_in_worker(connection=conn) is not None
        conn.rollback()
    assert _count() == 1


@DRIVER_PATHS
def test_execution_events_see_the_insert(db_url: str) -> None:
    engine = get_engine()
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        assert Echo("a").run_in_worker() is not None
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert any("INTO jobtable_request" in statement for statement in seen)
    assert _count() == 1


@PG_ONLY
def test_a_database_error_is_sqlalchemy_s_and_leaves_the_pool_usable(db_url: str) -> None:
    from sqlalchemy.exc import DBAPIError

    engine = get_engine()
    with engine.connect() as conn:
        conn.execute(text("ALTER TABLE jobtable_request ADD CONSTRAINT no_echo CHECK (task_name <> 'tests.sample_jobs.Echo')"))
        conn.commit()
    with pytest.raises(DBAPIError, match="no_echo") as raised:
        Echo("refused").run_in_worker()
    assert not raised.value.connection_invalidated
    with engine.connect() as conn:
        conn.execute(text("ALTER TABLE jobtable_request DROP CONSTRAINT no_echo"))
        conn.commit()
    assert Echo("b").run_in_worker() is not None
    assert _count() == 1
