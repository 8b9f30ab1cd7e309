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
