"""The two parts failover changed (issue 18), each on its own against the
test PostgreSQL server (tests/test_failover.py runs them in a real
failover): the clock offset is measured again after a lost connection or
on another server, and free liveness locks are not trusted right after the
looker's own lock session connected again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from jobtable.db import clock
from jobtable.db import engine as db_engine
from jobtable.db import liveness as db_liveness

from tests.conftest import PG_ADMIN_URL
from tests.polling import wait_for


@pytest.fixture
def fresh_clock() -> Iterator[None]:
    clock.reset()
    yield
    clock.reset()


def _terminate(application_name: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a"),
                         {"a": application_name})
    finally:
        admin.dispose()


def test_the_offset_is_measured_again_after_a_lost_connection(pg_url: str, fresh_clock: None) -> None:
    engine = db_engine.create_jobtable_engine(pg_url + "?application_name=jt-clock-lost")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        first = clock._synced_at
        assert first is not None and not clock.due()
        _terminate("jt-clock-lost")
        with pytest.raises(DBAPIError) as info:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert info.value.connection_invalidated
        # The next server may be another one: due now, not in 30 s.
        assert clock.due()
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert clock._synced_at is not None and clock._synced_at > first and not clock.due()
    finally:
        engine.dispose()


def test_a_connection_to_another_server_makes_the_offset_due(pg_url: str, fresh_clock: None) -> None:
    one = db_engine.create_jobtable_engine(pg_url)
    # The same server under another address stands for the next host of a
    # multi-host URL: psycopg says which host answered.
    other_url = make_url(pg_url).set(host="localhost").render_as_string(hide_password=False)
    other = db_engine.create_jobtable_engine(other_url)
    try:
        with one.connect():
            pass
        measured = clock._synced_at
        assert measured is not None and clock._server == ("127.0.0.1", make_url(pg_url).port or 5432)
        with other.connect():
            pass  # connect (another host: due) then checkout (measures)
        assert clock._synced_at is not None and clock._synced_at > measured
        assert clock._server[0] == "localhost"
        with other.connect():
            pass  # a pooled connection to the same server: nothing new
        assert not clock.due()
    finally:
        one.dispose()
        other.dispose()


def test_free_locks_are_not_trusted_right_after_a_reconnection(pg_url: str) -> None:
    engine = db_engine.create_jobtable_engine(pg_url)
    locks = db_engine.create_jobtable_engine(pg_url + "?application_name=jt-locks-again")
    session = db_liveness.LockSession(locks)
    try:
        assert session.hold(db_liveness.lock_key("jt-test-member"))
        with engine.connect() as conn:
            # The server has been up for long and the session never lost.
            assert db_liveness.locks_trusted(conn, session, 3.0)
            # Its connection ends, as every session does in a failover.
            _terminate("jt-locks-again")
            wait_for(lambda: not db_liveness.locks_trusted(conn, session, 3.0) and session.reconnected_at,
                     10, what="the session to connect again")
            assert session.connected
            assert not db_liveness.locks_trusted(conn, session, 3.0)
            reconnected = session.reconnected_at
            assert reconnected is not None
            # Trusted again once the grace passed since the reconnection.
            assert db_liveness.locks_trusted(conn, session, max(0.0, time.monotonic() - reconnected - 0.01))
    finally:
        session.close()
        engine.dispose()
        locks.dispose()
