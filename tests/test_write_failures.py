"""Writes that fail for good, not a brief disconnect: the connection drops
on the retry too, the database is not there at all, a constraint refuses
the statement, SQLite's file is full.  Each reaches the caller as a clear
error of its own type, is not retried when retrying cannot help, and leaves
nothing half-written: the batch is all or nothing, and sending it again once
the cause is gone writes each job once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

import jobtable
from jobtable import run_in_worker_many, settings
from jobtable.db import engine as db_engine
from jobtable.db import enqueue_sql, tables
from jobtable.exceptions import DatabaseUnavailable
from tests.sample_jobs import Echo

PG_ONLY = pytest.mark.parametrize("dialect", ["postgresql"])
SQLITE_ONLY = pytest.mark.parametrize("dialect", ["sqlite"])


def _task_ids() -> list[str]:
    with db_engine.connect() as conn:
        return sorted(conn.execute(select(tables.request.c.task_id)).scalars())


@PG_ONLY
def test_a_connection_dropped_on_the_retry_too_reaches_the_caller(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is gone for longer than one retry: both attempts lose
    their connection before COMMIT.  The second disconnect is raised (no
    third attempt), and neither attempt left a row."""
    real = enqueue_sql.insert_requests
    calls: list[int] = []

    def always_die(conn: Any, rows: Any) -> dict[str, int]:
        calls.append(len(rows))
        real(conn, rows)
        conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        return {}

    monkeypatch.setattr(enqueue_sql, "insert_requests", always_die)
    with pytest.raises(OperationalError, match="terminat|server closed|consuming input failed") as info:
        run_in_worker_many([Echo(str(i)) for i in range(3)])
    assert info.value.connection_invalidated
    assert calls == [3, 3]
    monkeypatch.setattr(enqueue_sql, "insert_requests", real)
    assert _task_ids() == []
    # Once the database answers again, the same jobs go in once each.
    jobs = run_in_worker_many([Echo(str(i)) for i in range(3)])
    assert _task_ids() == sorted(job.uuid for job in jobs if job is not None) and len(_task_ids()) == 3


@PG_ONLY
def test_a_constraint_violation_rolls_back_the_whole_batch_and_is_not_retried(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the statement for good (a duplicate primary key
    after the batch was inserted in the same transaction): IntegrityError,
    one attempt only, and none of the batch's rows stay."""
    real = enqueue_sql.insert_requests
    calls: list[int] = []

    def insert_then_violate(conn: Any, rows: Any) -> dict[str, int]:
        calls.append(len(rows))
        inserted = real(conn, rows)
        first = conn.execute(select(tables.request).limit(1)).mappings().one()
        conn.execute(tables.request.insert().values(dict(first)))  # same id: refused
        return inserted

    monkeypatch.setattr(enqueue_sql, "insert_requests", insert_then_violate)
    with pytest.raises(IntegrityError, match="duplicate key|UniqueViolation|unique"):
        run_in_worker_many([Echo(str(i)) for i in range(3)])
    assert calls == [3]  # refused for good: not retried
    assert _task_ids() == []


@pytest.fixture
def unreachable() -> Iterator[None]:
    jobtable.configure(database_url="postgresql+psycopg://jt_user:s3cret-pw@127.0.0.1:1/nowhere")
    db_engine.reset_engines()
    try:
        yield
    finally:
        settings.reset()
        db_engine.reset_engines()


@PG_ONLY
def test_a_database_that_is_not_there_is_a_clear_error(db_url: str, unreachable: None) -> None:
    with pytest.raises(DatabaseUnavailable, match="127.0.0.1:1/nowhere") as info:
        Echo("x").run_in_worker()
    text = str(info.value)
    assert "s3cret-pw" not in text and "Connection refused" in text, text


@pytest.fixture
def full_sqlite(db_url: str) -> Iterator[Callable[[], None]]:
    """Every new connection of the test's SQLite engine may not grow the
    file past its present size (PRAGMA max_page_count): SQLITE_FULL, as on
    a full disk.  Yields what frees the space again."""
    engine = db_engine.get_engine()

    def cap(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count={int(pages)}")
        cursor.close()

    def lift() -> None:
        if event.contains(engine, "connect", cap):
            event.remove(engine, "connect", cap)
        engine.dispose()

    engine.dispose()
    event.listen(engine, "connect", cap)
    try:
        yield lift
    finally:
        lift()


@SQLITE_ONLY
def test_a_full_sqlite_file_refuses_the_batch_whole(
    full_sqlite: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = enqueue_sql.insert_requests
    calls: list[int] = []

    def counting(conn: Any, rows: Any) -> dict[str, int]:
        calls.append(len(rows))
        return real(conn, rows)

    monkeypatch.setattr(enqueue_sql, "insert_requests", counting)
    big = "x" * 2000
    with pytest.raises(OperationalError, match="database or disk is full"):
        run_in_worker_many([Echo(big, i) for i in range(2000)])
    assert calls == [2000]  # a full disk is not a dropped connection: no retry
    full_sqlite()
    assert _task_ids() == []  # all or nothing
    jobs = run_in_worker_many([Echo(big, i) for i in range(2000)])
    with db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.request)).scalar_one() == 2000
    assert len({job.uuid for job in jobs if job is not None}) == 2000
