"""A worker member LISTENs on the connection it claims on (PostgreSQL): one
backend per member, not two, so a member that dies and is replaced costs
one new backend.  Notifications are never missed for it: neither those that
arrive while the member's own statements run (psycopg reads them, not a
wait), nor after its connection was cut and made again; and a connection
that goes back to a pool (a threads-pool member's) stops listening."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from jobtable.db import engine as db_engine
from jobtable.db.notify import PgSharedListener
from jobtable.worker.config import WorkerConfig
from jobtable.worker.process import Member
from jobtable.worker.slots import Slots
from jobtable.worker.timeouts import NoTimeout

from tests.worker_jobs import Noop, query, results, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.dialects("postgresql")


@pytest.fixture
def admin(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def backends(admin: Engine) -> set[int]:
    """Client backends of the test database, but the asker's."""
    with admin.connect() as conn:
        return set(conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )).scalars())


def channels(conn: Any) -> list[str]:
    return list(conn.exec_driver_sql("SELECT pg_listening_channels()").scalars())


def member() -> Member:
    stopped = threading.Event()
    return Member(
        WorkerConfig(queues=["here"], poll_interval=0.05), "test-member", Slots(1).slot(0),
        timer=NoTimeout(), should_stop=stopped.is_set,
    )


def test_a_member_listens_on_its_own_connection_and_misses_nothing(admin: Engine) -> None:
    db_engine.get_engine().dispose()  # no pooled connection to reuse: count what the member opens
    before = backends(admin)
    m = member()
    try:
        assert isinstance(m.listener, PgSharedListener)
        conn = m._connection()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert backends(admin) - before == {pid}  # one backend: the one it claims on
        assert channels(conn) == ["jobtable"]
        wait_for(lambda: m.listener.wait(0.05) is False, timeout=5, what="a quiet listener")

        # A notification that arrives during the member's own statement is
        # read by psycopg, not by the socket wait: the next wait still sees it.
        conn.exec_driver_sql("SELECT pg_notify('jobtable', 'here')")
        started = time.monotonic()
        assert m.listener.wait(5.0) is True
        assert time.monotonic() - started < 1.0
        # ... once: then quiet again; other queues do not wake it.
        conn.exec_driver_sql("SELECT pg_notify('jobtable', 'elsewhere')")
        assert m.listener.wait(0.2) is False

        # An enqueue from elsewhere wakes a waiting member.
        threading.Timer(0.1, lambda: Noop().run_in_worker(queue="here")).start()
        started = time.monotonic()
        assert m.listener.wait(5.0) is True
        assert time.monotonic() - started < 2.0
        rows = m._flush_and_claim(10)
        assert len(rows) == 1

        # The server ends the member's session: the wait returns (the socket
        # closed), the next statement fails, the member reconnects on one new
        # backend that listens again, and wake-ups work again.
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert m.listener.wait(5.0) is True
        with pytest.raises(db_engine.ERRORS):
            m._flush_and_claim(10)
        m._database_error(RuntimeError("terminated"))
        wait_for(lambda: pid not in backends(admin), timeout=10, what="the terminated backend to end")
        db_engine.get_engine().dispose()  # the enqueue's pooled connection: not one to reuse
        before = backends(admin)
        conn = m._connection()
        new_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert backends(admin) - before == {new_pid}
        assert channels(conn) == ["jobtable"]
        wait_for(lambda: m.listener.wait(0.05) is False, timeout=5, what="a quiet listener")
        threading.Timer(0.1, lambda: Noop().run_in_worker(queue="here")).start()
        assert m.listener.wait(5.0) is True
        driver = conn.connection.driver_connection
    finally:
        m._shutdown()
    # Its connection went back to the pool (a threads-pool member's does):
    # not listening any more, and no handler of the listener left on it.
    assert driver.execute("SELECT pg_listening_channels()").fetchall() == []
    assert driver._notify_handlers == []


def test_a_worker_holds_one_backend_per_member(
    admin: Engine, db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Two members: the supervisor's (its pool, its liveness session) and one
    per member -- none of them LISTENs on a connection of its own."""
    before = backends(admin)
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "2")

    def worker_backends() -> list[Any]:
        with admin.connect() as conn:
            rows = conn.execute(text(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )).all()
        return [row for row in rows if row[0] not in before]

    try:
        job = Noop().run_in_worker()
        assert job is not None
        wait_for(lambda: results(job.uuid), what="the worker to be up")
        before.add(query("SELECT pg_backend_pid()")[0][0])  # this test's own pooled connection
        # Both members connected (before the fix: 6 -- each member's LISTEN connection too).
        rows = wait_for(lambda: (lambda r: r if len(r) >= 4 else None)(worker_backends()), what="both members")
    finally:
        stop(proc)
    assert not [row for row in rows if row[1].strip().upper().startswith("LISTEN")], rows
    assert len(rows) == 4, rows  # 2 members + the supervisor's pooled and liveness connections
