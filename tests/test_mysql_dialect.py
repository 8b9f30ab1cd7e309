"""MySQL/MariaDB specifics (issue 17): the should_enqueue named lock when its
holder dies or hangs, and the bulk INSERT's literal values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

import jobtable
from jobtable.db import tables
from jobtable.db.dialects.mysql import EnqueueLockTimeout
from jobtable.db.engine import get_engine
from jobtable.jobbase import enqueue_lock_name
from jobtable.messages import decode_task
from tests.polling import wait_for
from tests.sample_jobs import AtMostTwo, Echo

pytestmark = pytest.mark.dialects("mysql")

#: A child process that takes the should_enqueue lock of a key through the
#: dialect, as an enqueue does, says so, and then waits forever in its
#: transaction (as an enqueue stuck in should_enqueue() would).
HOLDER = """
import sys, time
from jobtable.db import engine as db_engine
from jobtable.db.dialects import for_name
engine = db_engine.get_engine()
with engine.connect() as conn, conn.begin():
    for_name("mysql").lock_for_enqueue(conn, [sys.argv[1]])
    print("held", conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar(), flush=True)
    time.sleep(3600)
"""


@pytest.fixture
def holder(subprocess_env: dict[str, str]) -> Iterator[Any]:
    """Start a lock-holding child for a lock name; killed (by pid) at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(name: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, name], env=subprocess_env,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the lock is held (or the child died)
        assert line.startswith("held "), line
        return proc, int(line.split()[1])

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def lock_key() -> str:
    return enqueue_lock_name(AtMostTwo("k").job_name(), "")


def test_a_killed_holder_never_blocks_enqueue(db_url: str, holder: Any) -> None:
    # The child holds the lock: an enqueue of the key waits...
    proc, _ = holder(lock_key())
    jobtable.configure(database_url=db_url, enqueue_lock_timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # ...and once the holder is killed, its connection closes and the server
    # frees the lock: the enqueue goes through long before the 60 s timeout.
    t0 = time.monotonic()
    assert AtMostTwo("k").run_in_worker() is not None
    assert time.monotonic() - t0 < 10


def test_an_enqueue_waits_for_a_live_holder_then_goes_through(db_url: str, holder: Any) -> None:
    proc, _ = holder(lock_key())
    jobtable.configure(database_url=db_url, enqueue_lock_timeout=30)
    import threading

    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(AtMostTwo("k").run_in_worker()))
    thread.start()
    # The enqueue waits on the lock while the holder lives.
    wait_for(lambda: _waiting_on_lock(db_url), timeout=30, what="the enqueue to wait on GET_LOCK")
    assert not done
    os.kill(proc.pid, signal.SIGKILL)
    thread.join(timeout=30)
    assert done and done[0] is not None


def _waiting_on_lock(db_url: str) -> bool:
    with get_engine().connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT GET_LOCK%%' "
            "AND DB = DATABASE()"
        ).scalar()
    return bool(rows)


def test_a_hung_holder_fails_the_enqueue_naming_the_setting_and_the_holder(db_url: str, holder: Any) -> None:
    proc, connection_id = holder(lock_key())
    os.kill(proc.pid, signal.SIGSTOP)  # hangs: its session (and lock) stay
    jobtable.configure(database_url=db_url, enqueue_lock_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(EnqueueLockTimeout) as caught:
        AtMostTwo("k").run_in_worker()
    assert time.monotonic() - t0 < 10
    text = str(caught.value)
    assert "enqueue_lock_timeout" in text and "JOBTABLE_ENQUEUE_LOCK_TIMEOUT" in text
    assert f"MySQL connection {connection_id} holds it" in text and f"KILL {connection_id}" in text
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, jobtable.JobtableError)
    with get_engine().connect() as conn:  # nothing written
        assert conn.execute(select(tables.request.c.id)).first() is None


def test_enqueue_lock_timeout_is_checked() -> None:
    with pytest.raises(jobtable.JobtableError, match="enqueue_lock_timeout"):
        jobtable.configure(enqueue_lock_timeout=0)


AWKWARD = ["it's", "back\\slash", "nul\x00here", "%s %(x)s %%", ":name", "é😀", '"dq"', "'; DROP TABLE x; --",
           "\\'", "\n\r\t\x1a"]


@pytest.mark.parametrize("no_backslash_escapes", [False, True])
def test_bulk_values_round_trip(db_url: str, no_backslash_escapes: bool) -> None:
    """The bulk INSERT writes each value as the driver's own literal: what
    comes back is what was given, whatever the session's escaping mode."""
    engine = get_engine()
    with engine.connect() as conn:
        with conn.begin():
            if no_backslash_escapes:
                conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
            requests = jobtable.run_in_worker_many([Echo(text, n=i) for i, text in enumerate(AWKWARD)],
                                                   connection=conn, queue="q'%s")
            conn.exec_driver_sql("SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')")
    assert all(r is not None for r in requests)
    with engine.connect() as conn:
        rows = {row.id: row for row in conn.execute(select(tables.request))}
    for i, (request, text) in enumerate(zip(requests, AWKWARD)):
        assert request is not None
        row = rows[request.id]
        assert row.queue == "q'%s"
        call = decode_task(row.message)
        assert (call.args, call.kwargs) == ([text], {"n": i})
        assert json.loads(row.message)["headers"]["id"] == row.task_id
        assert row.created_at is not None and row.run_at is not None


# -- the single enqueue in autocommit mode (issue 17, step 2) --


class _Trips:
    """Counts what the driver sends on one mysqlclient connection: each
    ``query`` (a statement), ``commit``, ``rollback``, and autocommit switches
    that change the mode (mysqlclient skips the others)."""

    def __init__(self, dbapi: Any) -> None:
        self.dbapi = dbapi
        self.sent: list[str] = []
        for name in ("query", "commit", "rollback"):
            self._wrap(name)
        original = dbapi.autocommit

        def autocommit(on: bool) -> None:
            if dbapi.get_autocommit() != bool(on):
                self.sent.append(f"autocommit({bool(on)})")
            original(on)

        dbapi.autocommit = autocommit

    def _wrap(self, name: str) -> None:
        original = getattr(self.dbapi, name)

        def wrapped(*args: Any) -> Any:
            self.sent.append(name if name != "query" else (args[0][:20].decode() if isinstance(args[0], bytes)
                                                          else args[0][:20]))
            return original(*args)

        setattr(self.dbapi, name, wrapped)

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


def _pooled_driver_connection() -> Any:
    engine = get_engine()
    assert engine.pool.checkedout() == 0
    with engine.connect() as conn:
        return conn.connection.dbapi_connection


def test_a_single_enqueue_is_one_round_trip(db_url: str) -> None:
    get_engine().dispose()  # one pooled connection from here on: every step below uses it
    assert Echo("warm").run_in_worker() is not None  # the pool's one connection, now in autocommit
    trips = _Trips(_pooled_driver_connection())
    trips.take()  # the check-in of that look (not an enqueue's: a rollback)
    assert Echo("a").run_in_worker() is not None
    assert Echo("b").run_in_worker() is not None
    # The INSERT commits itself: no COMMIT, no ROLLBACK at check-in.
    assert trips.take() == ["INSERT IGNORE INTO j", "INSERT IGNORE INTO j"]
    # A transaction on that connection turns autocommit off first (one
    # round trip), and is a transaction: its rollback undoes its delete.
    with get_engine().connect() as conn:
        conn.execute(tables.request.delete())
        conn.rollback()
    assert trips.take()[:2] == ["autocommit(False)", "DELETE FROM jobtable"]
    with get_engine().connect() as conn:
        assert len(list(conn.execute(select(tables.request.c.id)))) == 3
    trips.take()
    # The next single enqueue switches back: two round trips, then one again.
    assert Echo("c").run_in_worker() is not None
    assert trips.take() == ["autocommit(True)", "INSERT IGNORE INTO j"]
    assert Echo("d").run_in_worker() is not None
    assert trips.take() == ["INSERT IGNORE INTO j"]


def test_a_connection_returned_inside_a_transaction_is_still_rolled_back(db_url: str) -> None:
    """A transaction begun on the driver behind SQLAlchemy's back, on a
    connection an enqueue left in autocommit mode, does not survive its
    check-in: the pool's reset is skipped only right after the enqueue."""
    get_engine().dispose()
    assert Echo("kept").run_in_worker() is not None
    raw = get_engine().raw_connection()
    assert raw.dbapi_connection is not None and raw.dbapi_connection.get_autocommit()
    cursor = raw.cursor()
    cursor.execute("START TRANSACTION")
    cursor.execute("DELETE FROM jobtable_request")
    cursor.close()
    raw.close()  # back to the pool with the DELETE uncommitted
    with get_engine().connect() as conn:
        assert len(list(conn.execute(select(tables.request.c.id)))) == 1
    assert Echo("again").run_in_worker() is not None
    with get_engine().connect() as conn:
        assert len(list(conn.execute(select(tables.request.c.id)))) == 2


def test_a_refused_single_enqueue_is_sqlalchemy_s_error_and_the_pool_stays_usable(db_url: str) -> None:
    from sqlalchemy.exc import DBAPIError

    engine = get_engine()
    assert Echo("warm").run_in_worker() is not None
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER no_echo BEFORE INSERT ON jobtable_request FOR EACH ROW "
            "IF NEW.message LIKE '%%refused%%' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no_echo'; END IF"
        )
    try:
        with pytest.raises(DBAPIError, match="no_echo") as raised:
            Echo("refused").run_in_worker()
        assert not raised.value.connection_invalidated
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP TRIGGER no_echo")
    assert Echo("b").run_in_worker() is not None
    with engine.connect() as conn:
        assert len(list(conn.execute(select(tables.request.c.id)))) == 2


# -- the claim (issue 17, step 2): two statements, the rows as the UPDATE left them --


@pytest.mark.parametrize("transport", [False, True])
def test_claimed_rows_are_the_rows_the_claim_left(db_url: str, transport: bool) -> None:
    from datetime import timedelta

    from jobtable.db import claims_sql, clock, transport_sql

    jobtable.run_in_worker_many([Echo(f"j{i}") for i in range(5)], queue="a")
    jobtable.run_in_worker_many([Echo(f"k{i}") for i in range(3)], queue="b", priority=5)
    now = clock.utcnow()
    lease = now + timedelta(seconds=30)
    with get_engine().connect() as conn:
        with conn.begin():
            if transport:
                rows = transport_sql.transport_claim(conn, ["a", "b"], 4, consumer_id="c1", lease_expires_at=lease)
            else:
                rows = claims_sql.claim(conn, ["a", "b"], 4, worker_id="w1", now=now)
        stored = {row.id: row for row in conn.execute(select(tables.request))}
    # Highest priority first, then oldest; the rows are what is stored now.
    assert [row.queue for row in rows] == ["b", "b", "b", "a"]
    assert [row.id for row in rows[:3]] == sorted(row.id for row in rows[:3])
    for row in rows:
        assert row._asdict() == stored[row.id]._asdict()
        # A Kombu consumer's claim leaves started_at to the started report.
        assert row.state == tables.RUNNING and row.started_at == (None if transport else now)
        assert row.worker_id == ("c1" if transport else "w1")
        assert row.lease_expires_at == (lease if transport else None)
        assert row.deliveries == (1 if transport else 0)
    assert sum(1 for row in stored.values() if row.state == tables.RUNNING) == 4


@pytest.mark.parametrize("no_backslash_escapes", [False, True])
def test_result_rows_round_trip(db_url: str, no_backslash_escapes: bool) -> None:
    """The worker's result INSERT writes driver literals too (insert_results_mysql):
    every text column comes back as written, a repeated (task id, attempt) is
    skipped, and an unknown column is refused by name."""
    from datetime import timedelta

    from jobtable.db import clock, result_rows

    now = clock.utcnow()
    rows = [
        {"task_id": f"t{i}", "task_name": text, "queue": text, "priority": -i, "attempt": 1, "retries": 0,
         "concurrency_key": None if i % 2 else text, "status": "SUCCESSFUL", "requested_at": now - timedelta(seconds=i),
         "started_at": None if i % 3 else now, "ended_at": now, "worker_id": text, "message": text * 50,
         "return_value": text, "error_message": text, "retried": bool(i % 2), "meta": None}
        for i, text in enumerate(AWKWARD)
    ]
    engine = get_engine()
    with engine.connect() as conn:
        with conn.begin():
            if no_backslash_escapes:
                conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
            result_rows.insert_results(conn, rows)
            result_rows.insert_results(conn, [dict(rows[0], return_value="second")])  # same (task_id, attempt)
            conn.exec_driver_sql("SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')")
        stored = {row.task_id: row for row in conn.execute(select(tables.result))}
        with pytest.raises(ValueError, match="nonsense"):
            result_rows.insert_results(conn, [dict(rows[0], nonsense=1)])
        conn.rollback()
        from jobtable.db import enqueue_sql

        with pytest.raises(ValueError, match="jobtable_request column.*nonsense"), conn.begin():
            enqueue_sql.insert_requests(conn, [{"task_id": "x", "nonsense": 1}])
    assert len(stored) == len(AWKWARD)
    for row in rows:
        got = stored[row["task_id"]]
        for column, value in row.items():
            assert getattr(got, column) == value, column


def test_a_single_enqueue_on_a_connection_the_server_ended_is_written_once(db_url: str) -> None:
    """The autocommit INSERT on a pooled connection whose session the server
    ended (a restart, KILL): SQLAlchemy's disconnect handling invalidates it,
    retry.py writes once more on a new connection, and the job is there once."""
    from sqlalchemy import create_engine

    engine = get_engine()
    engine.dispose()
    assert Echo("warm").run_in_worker() is not None
    with engine.connect() as conn:
        victim = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
    assert Echo("warm again").run_in_worker() is not None  # the pooled connection is in autocommit mode
    killer = create_engine(db_url)
    try:
        with killer.connect() as conn:
            conn.exec_driver_sql(f"KILL {int(victim)}")
    finally:
        killer.dispose()
    request = Echo("after").run_in_worker()
    assert request is not None
    with engine.connect() as conn:
        rows = list(conn.execute(select(tables.request.c.task_id)))
        assert conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar() != victim
    assert len(rows) == 3 and sum(1 for row in rows if row.task_id == request.uuid) == 1
