"""Workers behind a real PgBouncer in transaction mode (issue 18): the
connection budget, measured.  The representative worker tests (enqueue,
claim, retries, wake-up latency, rescue, schedules) run on the "pgbouncer"
dialect in their own modules (``BEHIND_PGBOUNCER``, tests/conftest.py).

Counted on the server (``pg_stat_activity``, the direct sessions carry the
application name of the direct URL) and on PgBouncer's admin console
(``SHOW POOLS``): the clients it serves and the server connections they
share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from jobtable import run_in_worker_many

from tests.conftest import PG_ADMIN_URL
from tests.worker_jobs import Log, lines, start_worker, stop, wait_for, worker_env

PROCESSES = 3


def _server_sessions(database: str) -> list[Any]:
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return list(conn.execute(text(
                "SELECT application_name, backend_type FROM pg_stat_activity "
                "WHERE datname = :db AND backend_type = 'client backend'"), {"db": database}))
    finally:
        admin.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "pgbouncer"], indirect=True)
def test_connection_budget_of_one_worker_host(
    dialect: str, db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """One host, PROCESSES members: directly 2 + M server connections (each
    member LISTENs on the connection it claims on);
    behind PgBouncer 1 + M direct sessions (liveness, LISTEN) and 1 + M
    pooled clients sharing a few server connections."""
    from jobtable.db import engine as db_engine

    database = make_url(db_url).database or ""
    log = str(tmp_path / "ran.log")
    proc = start_worker(worker_env(subprocess_env), "--max-processes", str(PROCESSES))
    try:
        # Every member has claimed (and so connected): as many jobs as
        # members, each long enough that they overlap.
        run_in_worker_many([Log(log, str(i), 0.3) for i in range(PROCESSES * 4)])
        wait_for(lambda: len(lines(log)) == PROCESSES * 4, what="the jobs")
        db_engine.reset_engines()  # this test's own pooled connections out of the count
        if dialect == "postgresql":
            # The supervisor's pool may keep a second connection it used
            # once (recording a member's end while a heartbeat ran).
            sessions = wait_for(lambda: (found := _server_sessions(database)) and 2 + PROCESSES <= len(found)
                                <= 3 + PROCESSES and found, what="2 + M server sessions")
            print(f"directly: {len(sessions)} server sessions for {PROCESSES} processes")
        else:
            from tests.conftest import BOUNCERS

            sessions = _server_sessions(database)
            direct = [s for s in sessions if s.application_name == "jobtable-direct"]
            assert len(direct) == 1 + PROCESSES, sessions

            def pools() -> list[Any]:
                return [p for p in BOUNCERS[db_url].pools() if p["database"] == database]

            def clients() -> int:
                return sum(p["cl_active"] + p["cl_waiting"] for p in pools())

            wait_for(lambda: 1 + PROCESSES <= clients() <= 2 + PROCESSES, what="1 + M clients of PgBouncer")
            found = pools()
            servers = sum(p["sv_active"] + p["sv_idle"] + p["sv_used"] + p["sv_tested"] + p["sv_login"] for p in found)
            # Server connections through PgBouncer: as many as were busy at
            # once, never more than its pool (20).
            assert 1 <= servers <= 20, found
            print(f"behind PgBouncer: {len(direct)} direct sessions, {clients()} clients, "
                  f"{servers} server connections")
    finally:
        out = stop(proc)
    assert "prepared statement" not in out, out[-3000:]
    assert "crashed" not in out
