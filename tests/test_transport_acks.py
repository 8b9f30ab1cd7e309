"""Acks the database could not take when they were made (a server restart,
an outage): kept, written once the database is back -- soon after, since an
ack still buffered when its consumer dies is a task run twice (the kill/restart
benchmark found two such tasks with the old one-second pause)."""

from __future__ import annotations

import logging

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text

from jobtable.db import engine as db_engine
from jobtable.transport import acks

from tests.conftest import PG_ADMIN_URL
from tests.worker_jobs import requests, wait_for


def test_the_pause_after_a_failed_write_starts_short_and_is_capped() -> None:
    delays = [acks.retry_delay(n) for n in range(1, 12)]
    assert delays[0] == acks.FIRST_RETRY_DELAY <= 0.05
    assert delays == sorted(delays) and delays[-1] == acks.MAX_RETRY_DELAY
    # The first pauses together stay well under one second: a restart's
    # outage is a fraction of a second.
    assert sum(delays[:4]) < 1.0
    for hostile in (0, -5, 10**9):
        assert 0 < acks.retry_delay(hostile) <= acks.MAX_RETRY_DELAY


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_acks_made_during_an_outage_are_written_once_it_ends(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    database = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    caplog.set_level(logging.WARNING, logger="jobtable.transport.acks")
    with Connection("jobtable+" + db_url, transport_options={"polling_interval": 0.1}) as conn:
        conn.connect()
        queue = conn.SimpleQueue("acks-outage")
        for i in range(3):
            queue.put({"i": i})
        held = [queue.get(timeout=5) for _ in range(3)]
        assert sorted(m.payload["i"] for m in held) == [0, 1, 2]
        try:
            with admin.connect() as sql:
                sql.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
                sql.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                    {"db": database},
                )
            for message in held:
                message.ack()
            wait_for(lambda: "could not write 3 ack(s)" in caplog.text, what="the ack writer to meet the outage")
        finally:
            with admin.connect() as sql:
                sql.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        db_engine.reset_engines()  # this test's own pooled connections died too
        wait_for(lambda: not requests(), what="the acked rows to be deleted")
        # Nothing is delivered again: the acks landed before any lease lapsed.
        queue.put({"i": "after"})
        assert queue.get(timeout=5).payload == {"i": "after"}
        queue.close()
    admin.dispose()
