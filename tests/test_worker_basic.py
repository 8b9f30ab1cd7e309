"""The worker runs jobs: results, return values, priorities, FIFO, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobtable import run_in_worker_many
from jobtable.db import tables

from tests.conftest import ALL_DIALECTS, BEHIND_PGBOUNCER
from tests.worker_jobs import (
    Add,
    Boom,
    Log,
    Noop,
    lines,
    requests,
    results,
    run_burst,
    start_worker,
    stop,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


@BEHIND_PGBOUNCER
def test_runs_jobs_and_records_results(db_url: str, subprocess_env: dict[str, str]) -> None:
    first = Add(2, 3).run_in_worker()
    second = Add(a=10, b=-1).run_in_worker()
    assert first and second
    run_burst(worker_env(subprocess_env), "--max-processes", "2")
    assert requests() == []
    rows = {r.task_id: r for r in results()}
    assert rows[first.uuid].status == tables.SUCCESSFUL
    assert json.loads(rows[first.uuid].return_value) == {"sum": 5}
    assert json.loads(rows[second.uuid].return_value) == {"sum": 9}
    for row in rows.values():
        assert row.attempt == 1 and not row.retried
        assert row.worker_id.startswith("native:")
        assert row.requested_at <= row.started_at <= row.ended_at
        assert row.error_type is None


def test_priority_first_then_fifo(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "order.log")
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", -3), ("e", 5), ("f", 10), ("g", 0)]
    for tag, priority in plan:
        Log(log, tag).run_in_worker(priority=priority)
    run_burst(worker_env(subprocess_env), "--max-processes", "1")
    assert lines(log) == ["f", "b", "e", "a", "c", "g", "d"]


def test_only_its_queues(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "q.log")
    Log(log, "fast").run_in_worker(queue="fast")
    Log(log, "slow").run_in_worker(queue="slow")
    Log(log, "default").run_in_worker()
    run_burst(worker_env(subprocess_env), "--queue", "fast", "--queue", "default", "--max-processes", "1")
    assert sorted(lines(log)) == ["default", "fast"]
    assert [r.queue for r in requests()] == ["slow"]


@BEHIND_PGBOUNCER
def test_failure_retries_with_delay_and_links(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "boom.log")
    request = Boom(log).run_in_worker(retries=2)
    assert request is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        wait_for(lambda: len(results(request.uuid)) == 3, timeout=30, what="three attempts")
    finally:
        stop(proc)
    attempts = results(request.uuid)
    assert [r.attempt for r in attempts] == [1, 2, 3]
    assert [r.status for r in attempts] == [tables.ERRORED] * 3
    assert [r.retried for r in attempts] == [True, True, False]
    assert all(r.error_type == "ValueError" and r.error_message == "boom" for r in attempts)
    assert "Traceback" in attempts[0].traceback and "boom" in attempts[0].traceback
    times = [float(x) for x in lines(log)]
    assert times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.3
    assert requests() == []


@BEHIND_PGBOUNCER
def test_bulk_drain_each_once(db_url: str, subprocess_env: dict[str, str]) -> None:
    run_in_worker_many([Noop() for _ in range(2000)])
    out = run_burst(worker_env(subprocess_env), "--max-processes", "2")
    # Behind PgBouncer: no statement prepared on a pooled connection (the
    # worker would retry what failed, and the counts below still hold).
    assert "prepared statement" not in out, out[-2000:]
    rows = results()
    assert len(rows) == 2000 and len({r.task_id for r in rows}) == 2000
    assert {r.status for r in rows} == {tables.SUCCESSFUL}
    assert requests() == []


def test_threads_pool(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "threads.log")
    run_in_worker_many([Log(log, str(i)) for i in range(50)])
    run_burst(worker_env(subprocess_env), "--pool", "threads", "--max-processes", "3")
    assert sorted(lines(log), key=int) == [str(i) for i in range(50)]
    assert len(results()) == 50
