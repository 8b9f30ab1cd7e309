"""A brief database outage under a consumer (transport/outage.py): the
consumer keeps its channel, its deliveries and its acks, so an ``acks_late``
task that ends during the outage runs once -- where a reconnect would have
handed it back while it ran.  Past ``outage_grace`` Kombu is told, as before.

The outage is made as in tests/test_worker_outage.py: ``ALLOW_CONNECTIONS
false`` plus ``pg_terminate_backend`` of the database's sessions.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text

from jobtable.db import engine as db_engine
from jobtable.exceptions import ConfigurationError
from jobtable.transport import acks, outage
from jobtable.transport.options import TransportOptions

from tests.conftest import PG_ADMIN_URL
from tests.test_transport_celery import Worker, app, celery_env  # noqa: F401  (fixtures)
from tests.transport_helpers import FAST_OPTIONS, rows, wait_for

PG = pytest.mark.parametrize("dialect", ["postgresql"])


@contextmanager
def refused_connections(db_url: str) -> Iterator[None]:
    """New connections to the test database are refused and its sessions
    ended, until the block exits."""
    database = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as sql:
            sql.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            sql.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"), {"db": database}
            )
        yield
    finally:
        with admin.connect() as sql:
            sql.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        db_engine.reset_engines()  # this test process's pooled connections died too


# -- the setting --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, 3601, "soon", [1]])
def test_outage_grace_out_of_range_is_refused_naming_it(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"outage_grace") as info:
        TransportOptions.from_mapping({"outage_grace": bad})
    assert "seconds" in str(info.value) or "float" in str(info.value)


def test_the_grace_never_outlasts_a_third_of_the_lease() -> None:
    assert TransportOptions.from_mapping({}).outage_grace_seconds == 10.0
    assert TransportOptions.from_mapping({"lease_seconds": 6}).outage_grace_seconds == 2.0
    assert TransportOptions.from_mapping({"outage_grace": 0}).outage_grace_seconds == 0.0


def test_pauses_start_short_grow_and_end_with_the_grace() -> None:
    grace = outage.OutageGrace(3600)
    error = RuntimeError("down")
    pauses = [grace.pause_after(error) for _ in range(8)]
    assert pauses[0] == acks.FIRST_RETRY_DELAY
    assert pauses == sorted(pauses) and pauses[-1] == acks.MAX_RETRY_DELAY
    grace.ok()
    assert grace.pause_after(error) == acks.FIRST_RETRY_DELAY  # a new outage starts short again
    assert outage.OutageGrace(0).pause_after(error) is None  # no grace: reported at once


def test_an_error_whose_text_cannot_be_made_still_gets_a_line() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    assert outage._first_line(Unprintable()) == "Unprintable"


# -- a Kombu consumer ---------------------------------------------------------------------


@PG
def test_a_consumer_keeps_its_messages_and_acks_through_an_outage(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobtable.transport.outage")
    options = {**FAST_OPTIONS, "lease_seconds": 30, "outage_grace": 10}
    with Connection("jobtable+" + db_url, transport_options=options) as conn:
        conn.connect()
        queue = conn.SimpleQueue("outage-ride")
        queue.put({"n": 1})
        queue.put({"n": 2})
        first = queue.get(timeout=5)
        with refused_connections(db_url):
            # Nothing can be claimed, and Kombu hears "nothing yet", not a
            # lost connection: the channel and its delivery stay valid.
            # (The claim after an empty one waits for the polling interval.)
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=2 * FAST_OPTIONS["polling_interval"] + outage.WARN_AFTER + 1)
            assert "the database is unreachable" in caplog.text  # said once it lasted WARN_AFTER
            first.ack()
        second = queue.get(timeout=10)
        second.ack()
        assert (first.payload, second.payload) == ({"n": 1}, {"n": 2})
        wait_for(lambda: not rows(db_url, "outage-ride"), what="both acks on the table")
        with pytest.raises(queue.Empty):
            queue.get(timeout=1)  # the first was never handed back
        queue.close()


@PG
def test_past_the_grace_kombu_is_told(db_url: str) -> None:
    options = {**FAST_OPTIONS, "lease_seconds": 30, "outage_grace": 0}
    with Connection("jobtable+" + db_url, transport_options=options) as conn:
        conn.connect()
        queue = conn.SimpleQueue("outage-told")
        queue.put({"before": True})
        assert queue.get(timeout=5).payload == {"before": True}  # now consuming
        with refused_connections(db_url):
            with pytest.raises(conn.connection_errors) as info:
                conn.drain_events(timeout=2 * FAST_OPTIONS["polling_interval"] + 0.5)
        assert "not currently accepting connections" in str(info.value) or "terminat" in str(info.value)
        queue.put({"after": True})
        assert queue.get(timeout=10).payload == {"after": True}
        queue.close()


# -- a Celery worker ------------------------------------------------------------------------


@PG
def test_an_acks_late_task_that_ends_during_an_outage_runs_once(
    db_url: str, app: Any, celery_env: dict[str, str], tmp_path: Path  # noqa: F811
) -> None:
    env = dict(celery_env, JT_TRANSPORT_OPTIONS=json.dumps({"lease_seconds": 30, "outage_grace": 10}))
    worker = Worker(env, tmp_path / "record.txt", "prefork")
    gate = tmp_path / "gate"
    try:
        app.gated_late.delay("t1", str(gate))
        wait_for(lambda: worker.lines("started") == [["t1"]], what="the task to start")
        with refused_connections(db_url):
            # Riding it out, or (the old way, outage_grace 0) reconnecting.
            met = ("the database is unreachable", "Connection to broker lost", "Cannot connect")
            wait_for(lambda: any(m in worker.log.read_text() for m in met), what="the worker to meet the outage")
            gate.touch()  # the task ends while the database is away
            wait_for(lambda: worker.lines("gated") == [["t1"]], what="the task to end")
        wait_for(lambda: not rows(db_url, "transport_tests"), what="the late ack on the table")
        app.note.delay("after")  # sent after the outage: runs after any redelivery would have
        wait_for(lambda: worker.lines("note") == [["after"]], what="a task sent after the outage")
        assert worker.lines("started") == [["t1"]]
        assert "Connection to broker lost" not in worker.log.read_text()
    finally:
        worker.stop()
