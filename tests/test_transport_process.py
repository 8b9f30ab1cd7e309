"""The transport across processes: kill -9 of a consumer, forked producers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time

import pytest
from kombu import Exchange, Queue

from jobtable.db import tables

from tests.conftest import ALL_DIALECTS

from .transport_helpers import FAST_OPTIONS, acked, connect, drain, rows, states, wait_for

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def test_killed_consumer_messages_come_back_after_the_lease(
    db_url: str, subprocess_env: dict[str, str], python: str
) -> None:
    with connect(db_url) as conn:
        simple = conn.SimpleQueue("crash")
        for i in range(3):
            simple.put({"i": i})
        simple.close()
        ids = [row.id for row in rows(db_url)]
        child = subprocess.Popen(
            [python, "-m", "tests.transport_consumer", db_url, "crash", "3"],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "HELD 3"
            assert states(db_url) == [tables.RUNNING] * 3
            # Alive: its leases are renewed past their first expiry.
            first = max(row.lease_expires_at for row in rows(db_url))
            wait_for(lambda: min(row.lease_expires_at for row in rows(db_url)) > first, what="renewal")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        started = time.monotonic()
        queue = Queue("crash", Exchange("crash"), "crash")
        got = drain(conn, queue, 3, timeout=5 + 3 * FAST_OPTIONS["lease_seconds"])
        assert sorted(m.payload["i"] for m in got) == [0, 1, 2]
        assert all(m.delivery_info["redelivered"] for m in got)
        assert time.monotonic() - started < 3 * FAST_OPTIONS["lease_seconds"] + 5
        # Same rows, never copied; acked now.
        assert acked(db_url) == []
        assert len(ids) == 3


def _publish_in_child(db_url: str, n: int) -> None:
    with connect(db_url) as conn:
        simple = conn.SimpleQueue("forked")
        for i in range(n):
            simple.put({"child": os.getpid(), "i": i})
        simple.close()


def test_producers_in_forked_processes(db_url: str) -> None:
    # The parent has a live connection (and engine) before forking.
    with connect(db_url) as conn:
        simple = conn.SimpleQueue("forked")
        simple.put({"parent": True})
        context = multiprocessing.get_context("fork")
        children = [context.Process(target=_publish_in_child, args=(db_url, 5)) for _ in range(3)]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=30)
            assert child.exitcode == 0
        got = [simple.get(timeout=5) for _ in range(16)]
        for message in got:
            message.ack()
        assert sum(1 for m in got if "child" in m.payload) == 15
        simple.close()
    assert rows(db_url) == []
