"""A dead pool member's rescue (worker/rescue.rescue_member), as the
supervisor writes it after each death: on PostgreSQL the common case is one
statement (db/rescue_pg.py), with the same outcome as on the other
dialects -- the started job LOST once, finished ones with their status,
unstarted ones pending again, the worker row gone, and nothing of anyone
else's touched; a LOST job with a retry left, or one due for quarantine,
goes the general way in the same transaction."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, tables, workers_sql
from jobtable.db.notify import Listener
from jobtable.worker import dispatch, rescue
from jobtable.worker.ledger import LedgerState

from tests.conftest import ALL_DIALECTS
from tests.worker_jobs import Log, query, requests, results, wait_for

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def claimed(worker_id: str, n: int, *, enqueue: bool = True, **options: Any) -> list[Any]:
    for i in range(n if enqueue else 0):
        assert Log("/dev/null", f"{worker_id}-{i}").run_in_worker(**options) is not None
    now = clock.utcnow()
    with db_engine.connect() as conn, conn.begin():
        workers_sql.register_worker(conn, worker_id, hostname="h", pid=1, queues=["default"], processes=1, now=now)
        # Far ahead: retries scheduled by earlier rescues are due too.
        rows = claims_sql.claim(conn, ["default"], n, worker_id=worker_id, now=now + timedelta(days=1))
    assert len(rows) == n
    return sorted(rows, key=lambda row: row.id)


def rescue_member(worker_id: str, ledger: LedgerState, **options: Any) -> tuple[tuple[int, int], list[str]]:
    """rescue_member as the supervisor calls it; also the statements sent."""
    sent: list[str] = []
    with db_engine.connect() as conn, conn.begin():
        event.listen(conn, "before_cursor_execute", lambda *args: sent.append(args[2]))
        out = rescue.rescue_member(
            conn, worker_id, ledger.running[0] if ledger.running else 0, clock.utcnow(),
            why="the worker process exited with code 13 while running the job", ledger=ledger, **options,
        )
    return out, sent


def test_a_dead_member_is_rescued_in_one_statement(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker without a runner that requeues lost attempts (the shim or a
    # Celery app imported into this test process may have registered one).
    monkeypatch.setattr(dispatch, "REQUEUE_ON_LOST", [])
    worker_id = f"native:h:{os.getpid()}:0:Lone"
    ok, failed, running, unstarted, also_unstarted = claimed(worker_id, 5)
    (elsewhere,) = claimed(f"native:h:{os.getpid()}:1:Lother", 1)
    ledger = LedgerState(
        running=[running.id],
        # One finished row is no longer this member's (written, or another
        # worker's): it must be left alone.
        finished=[ok.id, failed.id, elsewhere.id],
        statuses={ok.id: tables.SUCCESSFUL, failed.id: tables.ERRORED, elsewhere.id: tables.SUCCESSFUL},
    )
    listener = Listener.create(db_engine.get_engine(), ["default"])
    try:
        wait_for(lambda: listener.wait(0.05) is False, timeout=5, what="a quiet listener")
        (lost, released), sent = rescue_member(worker_id, ledger, quarantine_after=3)
        if db_url.startswith("postgresql"):
            assert len(sent) == 1, sent
            assert listener.wait(5.0) is True  # the released jobs' queue was NOTIFYed
    finally:
        listener.close()
    assert (lost, released) == (3, 2)
    got = {r.task_id: r for r in results()}
    assert sorted(got) == sorted(r.task_id for r in (ok, failed, running))
    assert (got[ok.task_id].status, got[ok.task_id].error_type) == (tables.SUCCESSFUL, "ResultLost")
    assert "return value was lost" in got[ok.task_id].error_message
    assert (got[failed.task_id].status, got[failed.task_id].error_type) == (tables.ERRORED, "ResultLost")
    lost_row = got[running.task_id]
    assert (lost_row.status, lost_row.error_type, lost_row.retried) == (tables.LOST, "WorkerLost", False)
    assert lost_row.error_message == "the worker process exited with code 13 while running the job"
    assert (lost_row.task_name, lost_row.attempt, lost_row.worker_id, lost_row.message) == (
        running.task_name, running.attempt, worker_id, running.message)
    assert lost_row.started_at == running.started_at and lost_row.requested_at == running.created_at
    left = {r.task_id: (r.state, r.worker_id) for r in requests()}
    assert left == {
        unstarted.task_id: (tables.PENDING, None), also_unstarted.task_id: (tables.PENDING, None),
        elsewhere.task_id: (tables.RUNNING, elsewhere.worker_id),
    }
    assert [row.id for row in query("SELECT id FROM jobtable_worker")] == [elsewhere.worker_id]


def test_a_retry_left_or_a_quarantine_goes_the_general_way(db_url: str) -> None:
    """Three deaths of one job with retries left: LOST and retried twice,
    then QUARANTINED (quarantine_after 3), not retried; an operator's kill
    (poison False) is LOST WorkerStopped and never counts."""
    task_id = ""
    for death in range(1, 4):
        worker_id = f"native:h:{os.getpid()}:0:Ldeath{death}"
        if death == 1:
            (row,) = claimed(worker_id, 1, retries=5)
            task_id = row.task_id
        else:
            (row,) = claimed(worker_id, 1, enqueue=False)  # the retry the last rescue enqueued
        (lost, released), _ = rescue_member(worker_id, LedgerState(running=[row.id]), quarantine_after=3)
        assert (lost, released) == (1, 0)
        statuses = [(r.attempt, r.status, r.retried) for r in results(task_id)]
        if death < 3:
            assert statuses[-1] == (death, tables.LOST, True)
            assert [(r.task_id, r.attempt, r.state) for r in requests()] == [(task_id, death + 1, tables.PENDING)]
        else:
            assert statuses[-1] == (3, tables.QUARANTINED, False)
            assert "Quarantined: this job killed its worker process 3 times" in results(task_id)[-1].error_message
            assert requests() == []
    worker_id = f"native:h:{os.getpid()}:0:Lstopped"
    (row,) = claimed(worker_id, 1)
    (lost, released), _ = rescue_member(worker_id, LedgerState(running=[row.id]), poison=False, quarantine_after=1)
    (stopped,) = results(row.task_id)
    assert (stopped.status, stopped.error_type) == (tables.LOST, "WorkerStopped")
