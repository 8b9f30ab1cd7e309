"""PostgreSQL bulk enqueue by COPY (issue 13, step 3): a batch without
unique keys is written by binary COPY, with its ids taken from the table's
sequence first and its NOTIFY in the same statement; everything a bulk
INSERT gave still holds -- the rows, their order, the returned ids, the
wake-up at commit and only then, the caller's transaction, and the
fallbacks to the INSERT where COPY cannot do what it did."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import event, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

import jobtable
from jobtable import Job, register_job
from jobtable.db import clock, enqueue_sql, tables
from jobtable.db.dialects import postgresql as pg_dialect
from jobtable.db.engine import get_engine
from tests.polling import wait_for

pytestmark = pytest.mark.dialects("postgresql")

N = 2 * pg_dialect._COPY_MIN


@register_job
class CopyArgs(Job):
    def __init__(self, x: Any, y: Any = None) -> None:
        self.x = x

    def run(self) -> None:
        pass


@register_job
class CopyKeyed(Job):
    def __init__(self, x: int) -> None:
        self.x = x

    def default_concurrency_key(self) -> str:
        return f"k{self.x % 10}"

    def run(self) -> None:
        pass


@register_job
class CopyNoArgs(Job):
    def run(self) -> None:
        pass


def awkward(n: int) -> list[Job]:
    # Quotes, backslashes, NUL (a JSON escape in the text), non-ASCII, a line
    # separator, nested values; jobs without arguments between them.
    return [CopyArgs(i, y='q"\\\x00é\u2028' * (i % 5)) if i % 3 else CopyNoArgs() for i in range(n)]


@contextmanager
def protocol_trace(conn: Connection) -> Iterator[list[str]]:
    """libpq's protocol trace of ``conn`` while the block runs: its lines."""
    lines: list[str] = []
    pgconn = conn.connection.driver_connection.pgconn  # type: ignore[union-attr]
    with tempfile.TemporaryFile(mode="w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield lines
        finally:
            pgconn.untrace()
            trace.seek(0)
            lines.extend(trace.read().splitlines())


def stored() -> dict[str, Any]:
    with get_engine().connect() as conn:
        return {row.task_id: row for row in conn.execute(select(tables.request).order_by(tables.request.c.id))}


def test_a_batch_goes_by_copy_and_stores_what_single_enqueues_store(db_url: str) -> None:
    engine = get_engine()
    with engine.begin() as conn, protocol_trace(conn) as trace:
        many = jobtable.run_in_worker_many(awkward(N), queue="copyq", priority=3, connection=conn)
    assert any("CopyInResponse" in line for line in trace), "the batch was not written by COPY"
    singles = [job.run_in_worker(queue="copyq", priority=3) for job in awkward(N)]
    rows = stored()
    assert len(rows) == 2 * N
    ids = [request.id for request in many]  # type: ignore[union-attr]
    # The returned ids are the stored ones, ascending in the jobs' order (FIFO
    # within the batch), and the sequence goes on after them.
    assert ids == sorted(ids) and len(set(ids)) == N
    assert [rows[r.uuid].id for r in many] == ids  # type: ignore[union-attr]
    assert min(s.id for s in singles) > max(ids)  # type: ignore[union-attr]
    for a, b in zip(many, singles):
        ra, rb = rows[a.uuid], rows[b.uuid]  # type: ignore[union-attr]
        assert ra.message.replace(a.uuid, "ID") == rb.message.replace(b.uuid, "ID")  # type: ignore[union-attr]
        for column in ("task_name", "queue", "priority", "state", "attempt", "retries", "concurrency_key",
                       "unique_key", "expires_at", "deliveries", "crashes", "worker_id", "started_at"):
            assert getattr(ra, column) == getattr(rb, column), column
        assert ra.run_at == ra.created_at and a.start_at == ra.run_at  # type: ignore[union-attr]


def test_delayed_batch_by_copy_is_scheduled(db_url: str) -> None:
    many = jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)], delay=3600)
    rows = stored()
    assert {rows[r.uuid].state for r in many} == {tables.SCHEDULED}  # type: ignore[union-attr]
    assert {r.state for r in many} == {tables.SCHEDULED}  # type: ignore[union-attr]


def listener(url: str) -> psycopg.Connection[Any]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("LISTEN jobtable")
    return conn


def test_the_wake_up_comes_with_the_commit_and_not_after_a_rollback(db_url: str) -> None:
    listen = listener(db_url)
    try:
        engine = get_engine()
        with engine.connect() as conn:
            with conn.begin() as transaction:
                jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)], queue="rolled", connection=conn)
                transaction.rollback()
        assert stored() == {}
        with engine.begin() as conn:
            jobtable.run_in_worker_many(
                [CopyNoArgs() for _ in range(N)] + [CopyArgs(1) for _ in range(N)], queue="kept", connection=conn
            )
        got: list[str] = []

        def woken() -> bool:
            got.extend(n.payload for n in listen.notifies(timeout=0.05, stop_after=1))
            return "kept" in got

        wait_for(woken, timeout=10, what="the NOTIFY of the committed batch")
        # Delivered in commit order: the rolled-back batch's would have come first.
        assert got == ["kept"]
        assert len(stored()) == 2 * N
    finally:
        listen.close()


def test_commit_as_you_go_connection(db_url: str) -> None:
    # SQLAlchemy begins the caller's transaction with the batch's first
    # statement; the caller's commit() keeps it, rollback() drops it.
    engine = get_engine()
    with engine.connect() as conn:
        jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)], queue="a", connection=conn)
        conn.rollback()
        assert stored() == {}
        out = jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)], queue="b", connection=conn)
        conn.commit()
    assert set(stored()) == {r.uuid for r in out}  # type: ignore[union-attr]


def test_autocommit_connection_takes_the_insert(db_url: str) -> None:
    # One INSERT is atomic with its NOTIFY; COPY in autocommit would commit
    # the wake-up before the rows.
    engine = get_engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, protocol_trace(conn) as trace:
        out = jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)], connection=conn)
    assert not any("CopyInResponse" in line for line in trace)
    assert set(stored()) == {r.uuid for r in out}  # type: ignore[union-attr]


def test_execution_events_see_the_insert(db_url: str) -> None:
    engine = get_engine()
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        out = jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)])
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert any("INSERT INTO jobtable_request" in s for s in seen)
    assert not any("COPY" in s for s in seen)
    assert len(stored()) == len(out) == N


def test_keyed_batch_keeps_one_per_key(db_url: str) -> None:
    # Unique keys need ON CONFLICT: the INSERT, not COPY.
    out = jobtable.run_in_worker_many([CopyNoArgs() for _ in range(N)], concurrency_key="k")
    assert sum(r is not None for r in out) == 1
    # Keys from each instance: the first job of each key kept.
    out = jobtable.run_in_worker_many([CopyKeyed(i) for i in range(N)])
    assert [r.concurrency_key for r in out if r is not None] == [f"k{i}" for i in range(10)]
    assert len(stored()) == 11


def base_row(task_id: str, **changes: Any) -> dict[str, Any]:
    now = clock.utcnow()
    row = {"task_id": task_id, "task_name": "t", "queue": "q", "priority": 0, "state": "pending", "run_at": now,
           "expires_at": None, "concurrency_key": None, "attempt": 1, "retries": 0, "created_at": now,
           "message": "{}"}
    row.update(changes)
    return row


@pytest.mark.parametrize(
    "changes",
    [
        {"message": "nul \x00 in the text"},  # PostgreSQL's text holds no NUL
        {"task_name": "x" * 300},  # over varchar(255)
        {"priority": 40_000},  # over smallint (psycopg's binary dumper would wrap it around)
        {"priority": -40_000},
        {"attempt": 2**31},  # over int4
        {"retries": 2**70},
        {"priority": "1"},  # not an int
        {"priority": [1]},  # unhashable
        {"run_at": "2026-01-01"},  # not a datetime
        {"task_id": 5},  # not a str
        {"task_id": None},  # NOT NULL
    ],
    ids=["nul", "too-long", "int2-over", "int2-under", "int4-over", "huge", "str-int", "unhashable", "str-time",
         "int-text", "null"],
)
def test_a_row_the_column_refuses_fails_the_whole_batch(db_url: str, changes: dict[str, Any]) -> None:
    # Rows by hand (the checks before insert_requests would refuse these):
    # an error (the database's, wrapped by SQLAlchemy, or psycopg's refusal
    # to adapt the value), never a value stored changed, and nothing written.
    rows = [base_row(f"id{i}") for i in range(N)]
    rows[N // 2].update(changes)
    with pytest.raises((DBAPIError, TypeError, ValueError)) as raised:
        with get_engine().begin() as conn:
            enqueue_sql.insert_requests(conn, rows)
    assert str(raised.value)
    assert stored() == {}
    # The pool's connection is usable afterwards.
    with get_engine().begin() as conn:
        assert len(enqueue_sql.insert_requests(conn, [base_row(f"ok{i}") for i in range(N)])) == N


def test_rows_with_other_columns_or_types(db_url: str) -> None:
    # A batch of transport-shaped rows (deliveries set, expires_at on some):
    # every value stored as given.
    later = clock.utcnow().replace(microsecond=0)
    rows = [base_row(f"id{i}", deliveries=i % 2, expires_at=later if i % 2 else None, priority=-32768 + i)
            for i in range(N)]
    with get_engine().begin() as conn:
        inserted = enqueue_sql.insert_requests(conn, rows)
    assert len(inserted) == N
    got = stored()
    for row in rows:
        stored_row = got[row["task_id"]]
        assert (stored_row.deliveries, stored_row.expires_at, stored_row.priority) == (
            row["deliveries"], row["expires_at"], row["priority"])
        assert stored_row.id == inserted[row["task_id"]]


def test_a_batch_over_the_insert_batch_size(db_url: str) -> None:
    n = pg_dialect.PostgresDialect.insert_batch + 3
    out = jobtable.run_in_worker_many([CopyNoArgs() for _ in range(n)])
    ids = [r.id for r in out]  # type: ignore[union-attr]
    assert len(set(ids)) == n and ids == sorted(ids)
    assert len(stored()) == n

