"""A live worker that finds it was declared lost (issue 18): a peer took its
rows -- as one does for a host cut off by the network -- and the worker
learns it at its next heartbeat.  It stops the job it no longer owns (no
second result), does not start the rest of its batch, and goes on with new
claims.  The namespaced partition test (test_multihost.py) shows the same
across a real network; this one runs on every dialect in a few seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobtable import run_in_worker_many
from jobtable.db import clock, tables, workers_sql
from jobtable.db import engine as db_engine
from jobtable.worker import rescue

from tests.conftest import ALL_DIALECTS, ROOT
from tests.netns_jobs import Hold, Mark, lines
from tests.polling import wait_for
from tests.worker_jobs import stop

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def _results() -> list[Any]:
    with db_engine.get_engine().connect() as conn:
        return list(conn.execute(select(tables.result).order_by(tables.result.c.id)))


def _worker_of_running(task_id: str) -> str:
    with db_engine.get_engine().connect() as conn:
        row = conn.execute(select(tables.request.c.worker_id).where(tables.request.c.task_id == task_id)).first()
    return str(row[0]) if row is not None and row[0] else ""


def test_a_worker_declared_lost_stops_what_it_no_longer_owns(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log, release = str(tmp_path / "runs.log"), str(tmp_path / "release")
    hold, *marks = run_in_worker_many([Hold(log, "hold", release), *(Mark(log, f"m{i}") for i in range(3))])
    assert hold is not None and all(marks)
    env = dict(subprocess_env, JOBTABLE_WORKER_LOST_AFTER="2", JOBTABLE_WORKER_SHUTDOWN_GRACE="5")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobtable", "--app", "tests.netns_jobs", "worker", "--max-processes", "1"],
        env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # One member, one batch: the hold runs, the marks wait behind it.
        wait_for(lambda: any(l[:2] == ["start", "hold"] for l in lines(log)), 30, what="the hold to start")
        worker_id = wait_for(lambda: _worker_of_running(hold.uuid), 10, what="the hold's worker id")
        # What a peer does to a worker whose heartbeats stopped.
        with db_engine.get_engine().begin() as conn:
            rescue.rescue_worker(conn, worker_id, clock.utcnow(), why="a peer declared it lost (test)")
            workers_sql.delete_workers(conn, [worker_id])
        rescued_at = time.time()
        stopped = wait_for(lambda: [l for l in lines(log) if l[:2] == ["stopped", "hold"]], 15,
                           what="the worker to stop the hold it no longer owns")
        delay = float(stopped[0][3]) - rescued_at
        # The marks: given back by the rescue (they had not started), run
        # once by whoever claims them next -- this very worker.
        wait_for(lambda: len([r for r in _results() if r.status == "SUCCESSFUL"]) == 3, 30, what="the marks")
    finally:
        Path(release).touch()
        out = stop(proc)
    rows = _results()
    by_task = {r.task_id: [x.status for x in rows if x.task_id == r.task_id] for r in rows}
    assert by_task[hold.uuid] == ["LOST"], out[-3000:]  # no CANCELLED second result
    for mark in marks:
        assert mark is not None and by_task[mark.uuid] == ["SUCCESSFUL"], out[-3000:]
    starts = sorted(l[1] for l in lines(log) if l[0] == "start")
    assert starts == ["hold", "m0", "m1", "m2"], starts  # nothing twice, the hold not again
    assert "was rescued by another worker" in out and "registering it again" in out, out[-3000:]
    assert delay < 5, (delay, out[-3000:])


def _dsn(engine: Any) -> str:
    raw = engine.raw_connection()
    try:
        return str(raw.driver_connection.info.dsn)
    finally:
        raw.close()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_statement_sent_into_a_partition_gives_up(db_url: str) -> None:
    """tcp_user_timeout (the connect timeout, at least 5 s): unacknowledged
    data ends the connection, rather than TCP's ~15 minutes of retries
    during which a supervisor neither heartbeats nor reaps."""
    import jobtable

    jobtable.configure(database_url=db_url, connect_timeout=2)
    assert "tcp_user_timeout=5000" in _dsn(db_engine.create_jobtable_engine(db_url))
    jobtable.configure(database_url=db_url, connect_timeout=30)
    assert "tcp_user_timeout=30000" in _dsn(db_engine.create_jobtable_engine(db_url))
    own = db_url + ("&" if "?" in db_url else "?") + "tcp_user_timeout=1234"
    assert "tcp_user_timeout=1234" in _dsn(db_engine.create_jobtable_engine(own))  # the URL's own wins
