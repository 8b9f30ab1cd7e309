"""The database refusing connections for a while (as during a PostgreSQL
restart): the worker -- supervisor and members -- waits and carries on.

New connections fail with an error jobtable turns into ``DatabaseUnavailable``
(``db/engine.connect``), not a SQLAlchemy ``DBAPIError``; the worker must treat
both alike.  The outage is made with ``ALLOW_CONNECTIONS false`` plus
``pg_terminate_backend`` of the database's sessions: new connections are
refused, as while a restarting server shuts down, without touching the
server other tests use.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from jobtable import run_in_worker_many
from jobtable.db import engine as db_engine

from tests.conftest import PG_ADMIN_URL
from tests.worker_jobs import Log, lines, requests, start_worker, stop, wait_for, worker_env


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_worker_survives_refused_connections(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    database = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    run_in_worker_many([Log(log, f"before-{i}") for i in range(20)])
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "2")
    try:
        wait_for(lambda: len(lines(log)) == 20, what="the jobs before the outage")
        db_engine.reset_engines()  # this test's pooled connections are about to die
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                         {"db": database})
        # Long enough for members and supervisor to try (and fail) to
        # reconnect several times: their first retry comes within ~0.1 s.
        time.sleep(2.0)
        assert proc.poll() is None, stop(proc)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    try:
        run_in_worker_many([Log(log, f"after-{i}") for i in range(20)])
        wait_for(lambda: len(lines(log)) == 40, what="the jobs enqueued after the outage")
        wait_for(lambda: not requests(), what="the queue to empty")
        assert proc.poll() is None
    finally:
        out = stop(proc)
        admin.dispose()
    assert sorted(lines(log)) == sorted([f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(20)])
    assert "crashed" not in out, out[-4000:]
    assert "Cannot connect" in out or "database error" in out, out[-4000:]
