"""Rescue paths a crash test does not reach: rows left running by a worker
that has no heartbeat row at all (an orphan: another host's, or a worker
rescued while it claimed), found by a real worker at start.  They are
recorded LOST once, retried after their own retry delay -- a timedelta, or
at once when computing it fails -- and run exactly once more."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, tables

from tests.worker_jobs import BadRetry, SlowRetry, lines, requests, results, start_worker, stop, wait_for, worker_env

GONE = "native:elsewhere:4242:0:gone00"


def test_orphan_rows_are_lost_once_and_retried_after_their_delay(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    slow_log, bad_log = str(tmp_path / "slow.log"), str(tmp_path / "bad.log")
    slow = SlowRetry(slow_log).run_in_worker(retries=1)
    bad = BadRetry(bad_log).run_in_worker(retries=1)
    assert slow and bad
    claimed_at = clock.utcnow() - timedelta(hours=1)
    with db_engine.get_engine().begin() as conn:
        claimed = claims_sql.claim(conn, ["default"], 10, worker_id=GONE, now=claimed_at)
    assert sorted(r.task_id for r in claimed) == sorted([slow.uuid, bad.uuid])
    assert all(r.state == tables.RUNNING and r.worker_id == GONE for r in requests())
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        retried = wait_for(lambda: [r for r in results(bad.uuid) if r.attempt == 2], what="the orphan retried and run")
        rescued_at = clock.utcnow()
        wait_for(lambda: results(slow.uuid), what="the slow one recorded LOST")
        (waiting,) = [r for r in requests() if r.task_id == slow.uuid]
    finally:
        out = stop(proc)
    # Each attempt 1: LOST once, saying why and that no ledger could tell more.
    for uuid in (slow.uuid, bad.uuid):
        first = results(uuid)[0]
        assert (first.attempt, first.status, first.retried) == (1, tables.LOST, True), out[-3000:]
        assert f"worker {GONE} has no heartbeat row" in first.error_message, first.error_message
        assert "no ledger on this machine" in first.error_message
    # The failing retry delay: retried at once, and it ran exactly once.
    assert [r.status for r in retried] == [tables.SUCCESSFUL]
    assert lines(bad_log) == ["bad-retry"]
    # The timedelta delay: attempt 2 waits about a minute, not run yet.
    assert (waiting.attempt, waiting.state) == (2, tables.SCHEDULED)
    assert waiting.run_at >= rescued_at + timedelta(seconds=45), (waiting.run_at, rescued_at)
    assert lines(slow_log) == []
    assert "Traceback" not in out, out[-3000:]
