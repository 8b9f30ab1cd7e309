"""Priority against claimed batches (worker/preempt.py): a job of higher
priority enqueued while a member holds a claimed batch of lower ones runs
after at most a few of them, not after the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobtable import run_in_worker_many
from jobtable.db import tables

from tests.conftest import ALL_DIALECTS
from tests.worker_jobs import Log, lines, requests, start_worker, stop, wait_for, worker_env

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

#: Low jobs that may start between the enqueue and the high one: the one
#: running, the checks' interval (50 ms) over a 50-ms job, and slack for a
#: loaded machine.
BOUND = 6


def test_higher_priority_overtakes_a_claimed_batch(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    # Fast ones first: the member's batch grows to 100; then slow ones, so
    # that a batch of them is held, unstarted, while one runs.
    run_in_worker_many([Log(log, f"fast{i}") for i in range(400)])
    run_in_worker_many([Log(log, f"slow{i}", sleep=0.05) for i in range(150)])
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1", "--max-pending-per-process", "100")
    try:
        def held() -> int:
            return sum(1 for r in requests() if r.state == tables.RUNNING)

        wait_for(lambda: any(t.startswith("slow") for t in lines(log)) and held() >= 25, timeout=60,
                 what="a batch of slow jobs claimed")
        before = len(lines(log))
        claimed = held()
        high = Log(log, "high").run_in_worker(priority=100)
        assert high is not None
        wait_for(lambda: "high" in lines(log), timeout=60, what="the high-priority job to run")
        order = lines(log)
        ran_before = order.index("high") - before
        assert ran_before <= BOUND, (ran_before, claimed)
        # Without the give-back it would have waited for the claimed batch.
        assert claimed - 1 > BOUND
    finally:
        stop(proc)
