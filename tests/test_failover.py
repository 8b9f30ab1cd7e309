"""Database failover mid-drain (issue 18, part 1): a primary with a
synchronous streaming replica (tests/pgpair.py), every process given one
libpq multi-host URL (``?host=a:p1&host=b:p2&target_session_attrs=
read-write``), the primary stopped as a crash stops it and the replica
promoted while a native worker drains, a Celery worker consumes through the
Kombu transport and an enqueuer enqueues.  Nobody is restarted or told.

The failover happens once, in the module's fixture (``failover``); the tests
assert what it left.  The replica's wall clock is 30 s ahead of this host's
(libfaketime), so a process that kept the offset it measured on the old
primary (db/clock.py) would write every heartbeat 30 s in the new server's
past -- and its peers would declare it dead (``LOST_AFTER`` is 10 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

import jobtable
from jobtable import run_in_worker_many, settings
from jobtable.db import clock
from jobtable.db import engine as db_engine
from jobtable.db import migrate

from tests.failover_jobs import Step
from tests.netns import CLUSTER_PREFIX
from tests.pgpair import PrimaryReplica
from tests.polling import terminate, wait_for

ROOT = Path(__file__).resolve().parent.parent
#: The new primary's clock, ahead of this host's (and the old primary's).
SKEW = 30.0
LOST_AFTER = 10
BEFORE = 120  # jobs enqueued before the workers start
ENQUEUED = 240  # by the enqueuer (about 6 s), across the failover
AFTER = 10  # by this process, once the replica is promoted
GAP = 1.0  # seconds between the primary's crash and the promotion


@dataclass
class Outcome:
    pair: PrimaryReplica
    work: Path
    #: Rows running on the old primary just before it stopped.
    running_at_crash: list[Any]
    #: Results and worker rows read from the new primary at the end.
    results: list[Any]
    workers: list[Any]
    #: The new primary's clock minus each worker row's last heartbeat.
    heartbeat_age: dict[str, float]
    requests_left: int
    pids_before: dict[str, int]
    pids_after: dict[str, int | None]
    #: This host's wall clock when the primary was stopped, and promoted.
    crashed_at: float
    promoted_at: float

    def ran(self) -> Counter[str]:
        return Counter(line.split()[1] for line in _lines(self.work / "ran.log") if line.split()[0] in ("ran", "note"))

    def enqueued(self, status: str) -> list[str]:
        return [line.split()[1] for line in _lines(self.work / "enqueued.log") if line.split()[0] == status]



def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


_ENGINES: dict[str, Any] = {}
#: The queues of this module's jobs (Celery's own event queues aside).
QUEUES = "queue IN ('default', 'transport_tests')"


def _query(url: str, sql: str) -> list[Any]:
    """Read through one server (not the multi-host URL: the test looks at
    each server on its own)."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = create_engine(url)
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("a") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def failover() -> Iterator[Outcome]:
    work = Path(tempfile.mkdtemp(prefix=f"{CLUSTER_PREFIX}{os.getpid()}-failover-"))
    os.chmod(work, 0o777)
    ran = work / "ran.log"
    procs: dict[str, subprocess.Popen[str]] = {}
    pair = PrimaryReplica(replica_clock_offset=SKEW)
    try:
        pair.start()
        migrate.upgrade(db_engine.create_jobtable_engine(pair.primary_url()))
        url = pair.url()
        settings.reset()
        jobtable.configure(database_url=url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBTABLE_", "FAKETIME", "LD_PRELOAD"))}
        env.update(
            PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
            JOBTABLE_DATABASE_URL=url, JOBTABLE_WORKER_LOST_AFTER=str(LOST_AFTER), JOBTABLE_CONNECT_TIMEOUT="2",
            JT_RECORD=str(ran),
            # Leases longer than the failover's gap: no redelivery of what a
            # live consumer holds (they would be harmless: at least once).
            JT_TRANSPORT_OPTIONS='{"lease_seconds": 10}',
        )
        procs["celery"] = _start([sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "worker",
                                  "-P", "threads", "-c", "2", "-Q", "transport_tests", "-l", "warning",
                                  "-n", f"failover{os.getpid()}@%h"], env, work / "celery.log")
        wait_for(lambda: "READY" in ran.read_text() if ran.exists() else False, 60, what="the Celery worker")
        # About 4 s of work for the three members: the crash comes mid-drain.
        run_in_worker_many([Step(str(ran), f"b{i}", 0.1) for i in range(BEFORE)])
        procs["enqueuer"] = _start([sys.executable, "-m", "tests.failover_jobs", str(work / "enqueued.log"),
                                    str(ran), str(ENQUEUED)], env, work / "enqueuer.log")
        wait_for(lambda: len(_lines(work / "enqueued.log")) >= 20, 60, what="the enqueuer")
        # Two native workers: each is the other's peer, which would rescue
        # its jobs if it took it for dead.
        for name, processes in (("worker", 2), ("worker2", 1)):
            procs[name] = _start([sys.executable, "-m", "jobtable", "--app", "tests.failover_jobs", "worker",
                                  "--max-processes", str(processes)], env, work / f"{name}.log")
        pids_before = {name: proc.pid for name, proc in procs.items()}
        # Mid-drain: the worker has run some of the jobs, holds others, and
        # the enqueuer is under way.
        wait_for(lambda: sum(1 for line in _lines(ran) if line.startswith("ran b")) >= 30, 60, what="the drain")
        assert "done" not in _lines(work / "enqueued.log"), "the enqueuer finished before the crash"
        running = _query(pair.primary_url(), "SELECT id, task_id, worker_id FROM jobtable_request "
                                             "WHERE state = 'running' AND queue = 'default' ORDER BY id")
        crashed_at = time.time()
        pair.stop_primary()
        time.sleep(GAP)  # the failover manager's reaction time: nothing to await
        pair.promote()
        promoted_at = time.time()

        def drained() -> bool:
            done = "done" in _lines(work / "enqueued.log")
            return done and not _query(pair.replica_url(), f"SELECT id FROM jobtable_request WHERE {QUEUES} LIMIT 1")

        wait_for(drained, 120, what="the enqueuer to finish and the queue to empty")
        # This process enqueues too: its pooled connections died with the
        # old primary (db/retry.py: one retry on a fresh one).
        run_in_worker_many([Step(str(ran), f"a{i}") for i in range(AFTER)])
        wait_for(lambda: all(f"ran a{i} " in ran.read_text() for i in range(AFTER)), 60, what="jobs after the failover")
        new = pair.replica_url()
        # One more heartbeat of every worker row after the last job.
        beats = {row.id: row.heartbeat_at for row in _query(new, "SELECT id, heartbeat_at FROM jobtable_worker")}

        def beat_again() -> bool:
            now = {row.id: row.heartbeat_at for row in _query(new, "SELECT id, heartbeat_at FROM jobtable_worker")}
            return all(now.get(worker) is None or now[worker] > at for worker, at in beats.items())

        wait_for(beat_again, 30, what="a heartbeat of every worker")
        results = _query(new, "SELECT task_id, status, attempt, worker_id, error_type FROM jobtable_result")
        workers = _query(new, "SELECT id, kind FROM jobtable_worker")
        ages = {row.id: float(row.age) for row in _query(
            new, "SELECT id, extract(epoch FROM clock_timestamp() - heartbeat_at) AS age FROM jobtable_worker")}
        left = len(_query(new, f"SELECT id FROM jobtable_request WHERE {QUEUES}"))
        pids_after = {name: (proc.pid if proc.poll() is None else None) for name, proc in procs.items()}
        outcome = Outcome(pair, work, running, results, workers, ages, left, pids_before, pids_after,
                          crashed_at, promoted_at)
        yield outcome
    finally:
        for proc in procs.values():
            terminate(proc, timeout=20)
        settings.reset()
        db_engine.reset_engines()
        # This process measured the new primary's clock (30 s ahead): the
        # next module's tests must not inherit that offset (SQLite's, say).
        clock.reset()
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        pair.close()
        shutil.rmtree(work, ignore_errors=True)


def _logs(outcome: Outcome) -> str:
    parts = []
    for name in ("worker", "worker2", "celery", "enqueuer"):
        parts.append(f"---- {name}\n{_lines(outcome.work / f'{name}.log')[-60:]}")
    parts.append(f"---- replica\n{outcome.pair.log('replica')[-3000:]}")
    return "\n".join(parts)


def test_nothing_committed_is_lost(failover: Outcome) -> None:
    ran = failover.ran()
    committed = failover.enqueued("ok")
    assert len(committed) + len(failover.enqueued("failed")) == ENQUEUED
    # Every enqueue that returned ran, through the native worker (Step) or
    # the Celery worker (note), and so did every job enqueued before.
    missing = [tag for tag in [*committed, *(f"b{i}" for i in range(BEFORE)), *(f"a{i}" for i in range(AFTER))]
               if not ran[tag]]
    assert not missing, _logs(failover)
    assert failover.requests_left == 0
    # The native worker's jobs: one SUCCESSFUL result each, none LOST.
    statuses = Counter(row.status for row in failover.results)
    assert set(statuses) == {"SUCCESSFUL"}, (statuses, [r for r in failover.results if r.status != "SUCCESSFUL"])


def test_native_jobs_run_once(failover: Outcome) -> None:
    ran = failover.ran()
    steps = [f"b{i}" for i in range(BEFORE)] + [f"a{i}" for i in range(AFTER)] + [
        t for t in failover.enqueued("ok") if int(t[1:]) % 2 == 0]
    twice = {tag: ran[tag] for tag in steps if ran[tag] != 1}
    assert not twice, _logs(failover)
    per_task = Counter(row.task_id for row in failover.results)
    assert set(per_task.values()) == {1}


def test_jobs_claimed_on_the_old_primary_finish_where_they_were(failover: Outcome) -> None:
    """A claim committed on the old primary is on the replica (synchronous
    replication): the row is still the claiming member's, which runs the
    job and records its one result there -- no rescue, no second run."""
    assert failover.running_at_crash, "the crash came when no job was claimed"
    by_task = {row.task_id: row for row in failover.results}
    for row in failover.running_at_crash:
        result = by_task[row.task_id]
        assert (result.status, result.attempt, result.worker_id) == ("SUCCESSFUL", 1, row.worker_id)


def test_every_process_reconnected_by_itself(failover: Outcome) -> None:
    for name in ("worker", "worker2", "celery"):
        assert failover.pids_after[name] == failover.pids_before[name], (name, _logs(failover))
    enqueuer = _lines(failover.work / "enqueued.log")
    # The enqueuer went on after its failures (the gap) and finished.
    assert enqueuer[-1] == "done"
    last_failure = max((i for i, line in enumerate(enqueuer) if line.startswith("failed")), default=-1)
    assert any(line.startswith("ok") for line in enqueuer[last_failure + 1:])
    for name in ("worker", "worker2"):
        worker_log = (failover.work / f"{name}.log").read_text()
        assert "crashed" not in worker_log
        # It did lose its connections (the test saw a failover, not a pause).
        assert "database error" in worker_log or "Cannot connect" in worker_log, _logs(failover)


def test_clock_measured_again_on_the_new_server(failover: Outcome) -> None:
    """Every live process's last heartbeat is recent by the new primary's
    clock, 30 s ahead of the old one's: each measured its offset again."""
    assert failover.heartbeat_age, "no worker rows"
    kinds = {row.kind for row in failover.workers}
    assert {"native", "kombu"} <= kinds, kinds
    stale = {worker: age for worker, age in failover.heartbeat_age.items() if not -1.0 < age < LOST_AFTER / 2}
    assert not stale, (stale, _logs(failover))
    # No peer mistook a live worker for a dead one.
    assert not [row for row in failover.results if row.error_type == "WorkerLost"]


def test_report_what_a_user_sees(failover: Outcome) -> None:
    """Reported, not asserted (pytest -s shows it): how long enqueues
    failed, and how soon jobs ran again after the promotion."""
    enqueued = [line.split() for line in _lines(failover.work / "enqueued.log") if line != "done"]
    failed = [float(parts[2]) for parts in enqueued if parts[0] == "failed"]
    ok_after = [float(parts[2]) for parts in enqueued if parts[0] == "ok" and float(parts[2]) > failover.promoted_at]
    ran_after = [float(line.split()[3]) for line in _lines(failover.work / "ran.log")
                 if line.startswith("ran ") and float(line.split()[3]) > failover.promoted_at]
    print(
        f"\nfailover: primary stopped, promoted {failover.promoted_at - failover.crashed_at:.2f} s later; "
        f"{len(failed)} of {len(enqueued)} enqueues failed"
        + (f" (from +{min(failed) - failover.crashed_at:.2f} s to +{max(failed) - failover.crashed_at:.2f} s)"
           if failed else "")
        + (f"; first enqueue after the promotion +{min(ok_after) - failover.promoted_at:.2f} s" if ok_after else "")
        + (f"; first job run after it +{min(ran_after) - failover.promoted_at:.2f} s" if ran_after else "")
        + f"; {len(failover.running_at_crash)} jobs were claimed on the old primary"
        + f"; errors {dict(Counter(parts[3] for parts in enqueued if parts[0] == 'failed'))}"
        + f"; jobs given back after an unknown claim: {_given_back(failover)}"
    )
    assert ran_after


def _given_back(outcome: Outcome) -> int:
    total = 0
    for name in ("worker", "worker2"):
        for line in _lines(outcome.work / f"{name}.log"):
            if "claimed during a disconnect" in line:
                total += int(line.split("gave back ")[1].split()[0])
    return total
