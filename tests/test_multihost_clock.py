"""The database's clock in a process whose own clock is wrong (db/clock.py;
issue 18): libfaketime shifts a real process's wall clock, the real server
answers.  The multi-host tests (test_multihost.py) show what it decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy.engine import make_url

from jobtable.db import clock
from jobtable.db import engine as db_engine

from tests.netns import FAKETIME_LIB

SCRIPT = """
import json, time
from datetime import timezone
from jobtable.db import clock
from jobtable.db import engine as db_engine
first = clock.utcnow().timestamp()  # before any connection of ours: the first enqueue's case
engine = db_engine.get_engine()
sql = {"postgresql": "SELECT clock_timestamp()", "mysql": "SELECT UTC_TIMESTAMP(6)"}.get(engine.dialect.name)
with engine.connect() as conn:
    value = conn.exec_driver_sql(sql).scalar() if sql else None
    ours = clock.utcnow().timestamp()
server = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp() if value else time.time()
print(json.dumps({"server": server, "ours": ours, "first": first, "host": time.time(), "offset": clock.offset()}))
"""

def _skewed(env: dict[str, str], offset: float) -> dict[str, float]:
    env = dict(env, LD_PRELOAD=str(FAKETIME_LIB), FAKETIME=f"{offset:+g}", FAKETIME_DONT_FAKE_MONOTONIC="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
@pytest.mark.parametrize("offset", [45.0, -45.0])
def test_a_skewed_process_stores_the_database_time(dialect: str, offset: float,
                                                   subprocess_env: dict[str, str]) -> None:
    import time

    seen = _skewed(subprocess_env, offset)
    real = time.time()
    assert abs(seen["host"] - (real + offset)) < 5, seen  # libfaketime took
    assert abs(seen["ours"] - seen["server"]) < 0.5, seen
    assert abs(seen["first"] - seen["server"]) < 1.0, seen
    assert abs(seen["ours"] - real) < 5, seen
    assert abs(seen["offset"] + offset) < 1.0, seen


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_sqlite_keeps_the_host_clock(subprocess_env: dict[str, str]) -> None:
    """One host's file: no server clock to ask (documented)."""
    seen = _skewed(subprocess_env, 45.0)
    assert seen["offset"] == 0.0
    assert abs(seen["ours"] - seen["host"]) < 0.5


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_measure_never_raises_and_keeps_the_offset(db_url: str) -> None:
    url = make_url(db_url)
    raw = psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    clock.reset()
    assert clock.measure(raw, "postgresql")
    kept = clock.offset()
    assert abs(kept) < 0.5  # same machine
    raw.close()
    assert clock.measure(raw, "postgresql") is False  # closed: no sample, no exception
    assert clock.offset() == kept
    # Unknown or clock-less dialects, hostile names: no sample.
    for name in ("sqlite", "", "postgresql\0", "\udcff", "x" * 10_000):
        assert clock.measure(raw, name) is False
    clock.reset()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_slow_sample_is_not_trusted_once_an_offset_is_known(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_url(db_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as raw:
        clock.reset()
        monkeypatch.setattr(clock, "MAX_RTT", 0.0)  # every round trip is "too slow" now
        assert clock.measure(raw, "postgresql")  # no offset yet: taken anyway
        assert clock.measure(raw, "postgresql") is False
    clock.reset()


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_maybe_sync_never_ends_the_callers_transaction(db_url: str) -> None:
    engine = db_engine.get_engine()
    # The same transaction after maybe_sync: same txid (PostgreSQL), still in one (MariaDB).
    txid = {"postgresql": "SELECT txid_current()", "mysql": "SELECT @@in_transaction"}[engine.dialect.name]
    with engine.connect() as conn:
        with conn.begin():
            conn.exec_driver_sql("SELECT 1 FROM jobtable_worker LIMIT 1")
            before = conn.exec_driver_sql(txid).scalar()
            clock.reset()
            clock.maybe_sync(conn)  # due, but inside a transaction: not now
            assert clock.due()
            assert conn.exec_driver_sql(txid).scalar() == before
        clock.maybe_sync(conn)  # outside one: measured
        assert not clock.due()
    clock.reset()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_checkout_measures_on_the_worker_engine(db_url: str) -> None:
    clock.reset()
    db_engine.reset_engines()
    with db_engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert not clock.due()
    assert abs(clock.offset()) < 0.5
    assert os.environ.get("FAKETIME") is None
    clock.reset()
