"""Losing the database connection: the worker reconnects and carries on,
without losing or duplicating a job (PostgreSQL: pg_terminate_backend)."""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from jobtable import run_in_worker_many
from jobtable.db import engine as db_engine
from jobtable.db import tables

from tests.worker_jobs import Log, lines, requests, results, start_worker, stop, wait_for, worker_env

JOBS = 1500


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_terminated_connections_reconnect_without_loss(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "ran.log")
    jobs = run_in_worker_many([Log(log, str(i), sleep=0.001) for i in range(JOBS)])
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "2")
    admin = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    database = db_url.rsplit("/", 1)[1]
    kills = 0
    stopped = threading.Event()
    try:
        wait_for(lambda: len(lines(log)) > 50, what="the drain to start")
        # Kill every other backend of this database, over and over, while it drains.
        while len(lines(log)) < JOBS and kills < 8:
            with admin.connect() as conn:
                kills += conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    ),
                    {"db": database},
                ).scalar_one()
            db_engine.get_engine().dispose()  # this test's own pooled connections died too
            wait_for(lambda n=len(lines(log)): len(lines(log)) > n + 50 or len(lines(log)) >= JOBS, timeout=30,
                     what="progress after the kill")
        wait_for(lambda: not requests(), timeout=60, what="the queue to empty")
    finally:
        stopped.set()
        out = stop(proc)
        admin.dispose()
    assert kills > 0
    assert "database error" in out or "connection lost" in out.lower() or "reconnect" in out.lower(), out[-3000:]
    rows = results()
    # One result per job, all successful: none lost, none written twice.
    assert collections.Counter(r.task_id for r in rows) == collections.Counter(j.uuid for j in jobs if j)
    assert {r.status for r in rows} == {tables.SUCCESSFUL}
    ran = collections.Counter(lines(log))
    assert set(ran) == {str(i) for i in range(JOBS)}
    # At-least-once: a job whose result commit was cut off may run again,
    # but its result is still written once.
    assert sum(ran.values()) - JOBS <= 2 * 100
