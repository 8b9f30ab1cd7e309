"""Surviving a database restart and a crash at the speed of the crash.

Enqueue (Job API), Kombu publish and the Celery result backend succeed on
the first call after the server dropped every connection (PostgreSQL:
``pg_terminate_backend`` of this database's backends, which is what a
restart does to a client's pool), and a retry after an unknown commit
outcome never writes a job twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError

from jobtable import run_in_worker_many
from jobtable.db import engine as db_engine
from jobtable.db import enqueue_sql, single_insert, tables

from tests.conftest import BEHIND_PGBOUNCER
from tests.sample_jobs import Echo
from tests.pg_backends import terminate_clients

PG_ONLY = pytest.mark.parametrize("dialect", ["postgresql"])


def _request_count() -> int:
    with db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.request)).scalar_one())


def _pool_warm(n: int = 3) -> None:
    # Several pooled connections, all of which the "restart" kills.
    conns = [db_engine.get_engine().connect() for _ in range(n)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
    for conn in conns:
        conn.close()


#: The two ways a single row is written: the lean one (``db/single_insert``,
#: one prepared autocommit statement, PostgreSQL with psycopg) and
#: SQLAlchemy's (``enqueue_sql.insert_requests``), which a statement
#: listener forces.  The faults below are injected into whichever runs.
WRITE_PATHS = pytest.mark.parametrize("write_path", ["single", "general"], indirect=True)


@pytest.fixture
def write_path(request: pytest.FixtureRequest, db_url: str) -> Iterator[str]:
    # On the Engine class: the Kombu transport's engine is its own.
    def watch(*args: Any) -> None:
        pass

    if request.param == "general":
        event.listen(Engine, "before_cursor_execute", watch)
    assert single_insert.usable(db_engine.get_engine()) is (request.param == "single")
    yield request.param
    if request.param == "general":
        event.remove(Engine, "before_cursor_execute", watch)


class Writes:
    """Every single-row write of either path, with a fault on the first.

    ``fault``: "after" -- the row is committed, then the connection dies
    before its answer (the outcome the client cannot know); "before" -- the
    connection dies before anything is written; "error" -- a database error
    that is not a disconnect."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db_url: str, fault: str) -> None:
        self.calls: list[str] = []  # one entry per statement that wrote (or tried to write) rows
        self.fault = fault
        real_general = enqueue_sql.insert_requests
        real_single = single_insert.insert

        def general(conn: Any, rows: Any) -> dict[str, int]:
            self.calls.append(f"general:{len(rows)}")
            if len(self.calls) > 1:
                return real_general(conn, rows)
            if fault == "error":
                conn.exec_driver_sql("SELECT 1/0")
            if fault == "before":
                conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
            inserted = real_general(conn, rows)  # autocommit: committed here
            if fault == "after":
                # The server ends this very session after the commit.
                conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
            return inserted

        def single(engine: Any, row: dict[str, Any]) -> int | None:
            self.calls.append("single:1")
            if len(self.calls) > 1:
                return real_single(engine, row)
            if fault == "error":
                monkeypatch.setattr(single_insert, "SQL", _DIVIDE_BY_ZERO)
                try:
                    return real_single(engine, row)
                finally:
                    monkeypatch.setattr(single_insert, "SQL", _REAL_SQL)
            if fault == "after":
                real_single(engine, dict(row))  # committed
            # Every pooled connection dies (the server restarted): the next
            # statement sent on one fails as a disconnect, as the answer to
            # the committed statement would have.
            _pool_warm()
            terminate_clients(db_url)
            return real_single(engine, row)

        monkeypatch.setattr(enqueue_sql, "insert_requests", general)
        monkeypatch.setattr(single_insert, "insert", single)


_REAL_SQL = single_insert.SQL
#: A statement of the same parameters that fails with a data error.
_DIVIDE_BY_ZERO = "SELECT 1/0 WHERE " + " AND ".join(["%s::text IS NULL"] * len(single_insert.COLUMNS))


@PG_ONLY
@pytest.mark.parametrize("count", [1, 3])
def test_enqueue_succeeds_on_the_first_call_after_the_server_dropped_connections(db_url: str, count: int) -> None:
    run_in_worker_many([Echo("warm")])
    _pool_warm()
    assert terminate_clients(db_url) >= 1
    jobs = run_in_worker_many([Echo(f"after-{i}") for i in range(count)])
    assert all(job is not None for job in jobs)
    assert _request_count() == 1 + count


@PG_ONLY
@WRITE_PATHS
def test_enqueue_after_an_unknown_commit_outcome_writes_the_job_once(
    db_url: str, write_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The single enqueue is committed, then its connection dies before the
    answer arrives: the retry finds the row by task id and inserts nothing."""
    writes = Writes(monkeypatch, db_url, "after")
    [job] = run_in_worker_many([Echo("once")])
    assert job is not None
    assert writes.calls == [f"{write_path}:1"]  # the retry found the row and did not insert again
    with db_engine.connect() as conn:
        rows = list(conn.execute(select(tables.request.c.id, tables.request.c.task_id)))
    assert [(r.id, r.task_id) for r in rows] == [(job.id, job.uuid)]


@PG_ONLY
@WRITE_PATHS
def test_enqueue_retries_once_when_the_connection_died_before_the_write(
    db_url: str, write_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = Writes(monkeypatch, db_url, "before")
    [job] = run_in_worker_many([Echo("late")])
    assert job is not None
    # The retry runs on SQLAlchemy's path (it first looks for the row).
    assert writes.calls == [f"{write_path}:1", "general:1"]
    with db_engine.connect() as conn:
        assert list(conn.execute(select(tables.request.c.task_id)).scalars()) == [job.uuid]


@PG_ONLY
def test_enqueue_in_a_transaction_retries_when_the_connection_died_before_commit(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three jobs go in one BEGIN ... COMMIT; the connection dies before the
    COMMIT: nothing was written, the retry writes all three once."""
    real = enqueue_sql.insert_requests
    calls: list[int] = []

    def die_before_commit(conn: Any, rows: Any) -> dict[str, int]:
        calls.append(len(rows))
        if len(calls) == 1:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        return real(conn, rows)

    monkeypatch.setattr(enqueue_sql, "insert_requests", die_before_commit)
    jobs = run_in_worker_many([Echo(str(i)) for i in range(3)])
    assert calls == [3, 3]
    with db_engine.connect() as conn:
        task_ids = sorted(conn.execute(select(tables.request.c.task_id)).scalars())
    assert task_ids == sorted(job.uuid for job in jobs if job is not None)


@PG_ONLY
@WRITE_PATHS
def test_enqueue_is_not_retried_for_errors_other_than_a_dropped_connection(
    db_url: str, write_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = Writes(monkeypatch, db_url, "error")
    with pytest.raises(DataError, match="division by zero"):
        run_in_worker_many([Echo("x")])
    assert writes.calls == [f"{write_path}:1"]
    assert _request_count() == 0


@PG_ONLY
def test_kombu_publish_succeeds_on_the_first_call_after_the_server_dropped_connections(db_url: str) -> None:
    with Connection("jobtable+" + db_url) as conn:
        queue = conn.SimpleQueue("liveness")
        queue.put({"n": 1})
        _pool_warm()
        assert terminate_clients(db_url) >= 1
        queue.put({"n": 2})
        got = []
        for _ in range(2):
            message = queue.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        got.sort()
        queue.close()
    assert got == [1, 2]
    assert _request_count() == 0


@PG_ONLY
@WRITE_PATHS
def test_kombu_publish_retry_after_an_unknown_commit_publishes_once(
    db_url: str, write_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Connection("jobtable+" + db_url) as conn:
        queue = conn.SimpleQueue("liveness-once")
        with monkeypatch.context() as patch:
            writes = Writes(patch, db_url, "after")
            queue.put({"n": 1})
        assert writes.calls == [f"{write_path}:1"]
        assert _request_count() == 1
        assert queue.get(timeout=5).payload == {"n": 1}
        queue.close()


@PG_ONLY
@WRITE_PATHS
def test_a_retry_published_after_a_dropped_connection_is_not_mistaken_for_its_earlier_attempt(
    db_url: str, write_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's retry re-publishes the task id of the attempt still held (or
    already recorded): the check after a dropped connection must look for
    this attempt, not for the task id, or the retry is skipped and lost."""
    headers = {"id": "retried-task", "task": "tests.retried", "retries": 0}
    with Connection("jobtable+" + db_url) as conn:
        producer = conn.Producer()
        queue = conn.SimpleQueue("liveness-retry").queue
        producer.publish({"n": 1}, routing_key="liveness-retry", headers=headers, declare=[queue])
        with monkeypatch.context() as patch:
            writes = Writes(patch, db_url, "before")
            producer.publish({"n": 2}, routing_key="liveness-retry", headers={**headers, "retries": 1})
    assert writes.calls == [f"{write_path}:1", "general:1"]  # the first try died, the retry wrote the row
    with db_engine.connect() as sql:
        stmt = select(tables.request.c.attempt).where(tables.request.c.task_id == "retried-task")
        attempts = sorted(sql.execute(stmt).scalars())
    assert attempts == [1, 2]


@PG_ONLY
def test_result_backend_write_succeeds_on_the_first_call_after_the_server_dropped_connections(db_url: str) -> None:
    from celery import Celery, states

    app = Celery("liveness", backend="jobtable+" + db_url, broker="memory://")
    backend = app.backend
    backend.store_result("t-before", 1, states.SUCCESS)
    _pool_warm()
    assert terminate_clients(db_url) >= 1
    backend.store_result("t-after", 2, states.SUCCESS)
    assert backend.get_task_meta("t-after")["result"] == 2


# -- a dead worker is known at once ---------------------------------------------


def _gate_started(log: str) -> bool:
    from tests.worker_jobs import lines

    return "started" in lines(log)


@BEHIND_PGBOUNCER
def test_a_worker_killed_as_a_whole_is_rescued_by_a_peer_at_once(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Any
) -> None:
    """worker_lost_after=300: only the lock (PostgreSQL) or the pid
    (SQLite) can tell the peer within seconds."""
    import os
    import signal
    import time

    from tests.worker_jobs import Gate, results, start_worker, stop, wait_for, worker_env

    env = worker_env(subprocess_env, worker_lost_after=300)
    log, release = str(tmp_path / "gate.log"), str(tmp_path / "release")
    [job] = run_in_worker_many([Gate(log, release)])
    assert job is not None
    victim = start_worker(env, "--max-processes", "1", start_new_session=True)
    peer = None
    try:
        wait_for(lambda: _gate_started(log), what="the gate job to start")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=10)
        killed_at = time.monotonic()
        peer = start_worker(env, "--max-processes", "1")
        lost = wait_for(lambda: [r for r in results(job.uuid) if r.status == tables.LOST], timeout=20,
                        what="the killed worker's job to be recorded LOST")
        took = time.monotonic() - killed_at
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
        out = stop(peer) if peer is not None else ""
    assert took < 10, f"rescued after {took:.1f} s\n{out[-2000:]}"
    assert "died" in (lost[0].error_message or ""), lost[0].error_message
    assert len(results(job.uuid)) == 1


def test_a_live_but_frozen_worker_is_never_rescued(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Any
) -> None:
    """SIGSTOP: the process exists and its database session lives on."""
    import os
    import signal
    import time
    from pathlib import Path

    from tests.worker_jobs import Gate, results, start_worker, stop, wait_for, worker_env

    env = worker_env(subprocess_env, worker_lost_after=300)
    log, release = str(tmp_path / "gate.log"), str(tmp_path / "release")
    [job] = run_in_worker_many([Gate(log, release)])
    assert job is not None
    slow = start_worker(env, "--max-processes", "1", start_new_session=True)
    peer = start_worker(env, "--max-processes", "1")
    try:
        wait_for(lambda: _gate_started(log), what="the gate job to start")
        os.killpg(slow.pid, signal.SIGSTOP)
        # Many liveness rounds of the peer (every 0.25 s, CONFIRM 0.5 s).
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert results(job.uuid) == []
            time.sleep(0.2)
        os.killpg(slow.pid, signal.SIGCONT)
        Path(release).touch()
        wait_for(lambda: results(job.uuid), what="the gate job's result")
    finally:
        os.killpg(slow.pid, signal.SIGCONT)
        out = stop(slow) + stop(peer)
    rows = results(job.uuid)
    assert [r.status for r in rows] == [tables.SUCCESSFUL], out[-3000:]


_HOLDER = """
import sys, time
import jobtable  # registers the jobtable+ transport
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    queue = conn.SimpleQueue("liveness-held")
    message = queue.get(timeout=30)
    print("holding", message.payload["n"], flush=True)
    time.sleep(600)
"""


def test_a_killed_kombu_consumer_s_message_is_redelivered_within_seconds(
    db_url: str, subprocess_env: dict[str, str]
) -> None:
    """The default 60 s lease: only the lock (PostgreSQL) or the pid
    (SQLite) can bring the message back this fast."""
    import subprocess
    import sys
    import time

    broker = "jobtable+" + db_url
    with Connection(broker) as conn:
        queue = conn.SimpleQueue("liveness-held")
        queue.put({"n": 7})
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, broker], env=subprocess_env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().split() == ["holding", "7"]
            holder.kill()
            holder.wait(timeout=10)
            killed_at = time.monotonic()
            message = queue.get(timeout=20)
            took = time.monotonic() - killed_at
            assert message.payload == {"n": 7}
            message.ack()
        finally:
            if holder.poll() is None:
                holder.kill()
            queue.close()
    assert took < 10, f"redelivered after {took:.1f} s"


@PG_ONLY
def test_live_workers_are_not_rescued_when_the_server_drops_every_session(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Any
) -> None:
    """pg_terminate_backend of every session frees every lock at once, as a
    restart does: the live workers take theirs again before a peer's second
    look (CONFIRM), so the running job is not recorded LOST."""
    import time
    from pathlib import Path

    from tests.worker_jobs import Gate, results, start_worker, stop, wait_for, worker_env

    env = worker_env(subprocess_env, worker_lost_after=300)
    log, release = str(tmp_path / "gate.log"), str(tmp_path / "release")
    [job] = run_in_worker_many([Gate(log, release)])
    assert job is not None
    workers = [start_worker(env, "--max-processes", "1") for _ in range(2)]
    try:
        wait_for(lambda: _gate_started(log), what="the gate job to start")
        for _ in range(3):
            assert terminate_clients(db_url) >= 2
            db_engine.get_engine().dispose()
            time.sleep(1.5)  # several liveness rounds of both peers
            assert results(job.uuid) == []
        Path(release).touch()
        wait_for(lambda: results(job.uuid), what="the gate job's result")
    finally:
        out = "".join(stop(w) for w in workers)
    assert [r.status for r in results(job.uuid)] == [tables.SUCCESSFUL], out[-3000:]
