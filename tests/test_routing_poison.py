"""Routed jobs that kill their worker process (issues 12 and 18): the same
guarantees as the table's (test_worker_poison_crash.py).  The started job is
recorded LOST once by the supervisor, from the routed part of the member's
ledger, before the broker redelivers it (then it is acked without running);
after ``worker_quarantine_after`` kills it is QUARANTINED; the jobs only
prefetched by the dead member run once; the worker keeps running.  Real
RabbitMQ (127.0.0.1:5672), one queue per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import jobtable
from jobtable.cli import main as cli
from jobtable.db import clock, rescue_sql, tables
from jobtable.worker import ledger as ledgers
from jobtable.worker.routed_ledger import RoutedJobs

from tests.poison_crash_jobs import Crash, Gate, Log
from tests.routing_support import AMQP_URL, delete_queues, depth, new_queue, routes_env
from tests.worker_jobs import ROOT, lines, query, requests, results, stop, wait_for, worker_env


@pytest.fixture
def queue(db_url: str) -> Iterator[str]:
    name = new_queue("jt_poison")
    jobtable.configure(broker_routes={name: AMQP_URL})
    yield name
    delete_queues(name)


def start(env: dict[str, str], queue: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.poison_crash_jobs", "worker",
         "-q", queue, "--max-processes", "1", *args],
        env=routes_env(env, queue), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def logs(tmp_path: Path, queue: str, n: int, prefix: str = "n") -> list[tuple[Any, str]]:
    out = []
    for i in range(n):
        path = str(tmp_path / f"{prefix}{i}")
        job = Log(path, f"{prefix}{i}").run_in_worker(queue=queue)
        assert job is not None
        out.append((job, path))
    return out


def members(pid: int) -> list[int]:
    """The worker's member processes (its children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def ran_once(jobs: list[tuple[Any, str]]) -> None:
    for job, path in jobs:
        assert [r.status for r in results(job.uuid)] == [tables.SUCCESSFUL], job
        assert len(lines(path)) == 1, path


def settled(queue: str, *uuids: str) -> bool:
    return all(results(u) for u in uuids) and depth(queue) == 0 and not requests()


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_routed_job_that_kills_its_process_runs_once_and_is_lost_once(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    crash_log = str(tmp_path / "crash")
    crash = Crash(crash_log, how=how).run_in_worker(queue=queue)
    assert crash is not None
    after = logs(tmp_path, queue, 3)  # prefetched with it, behind it
    proc = start(worker_env(subprocess_env), queue)
    try:
        wait_for(lambda: settled(queue, crash.uuid, *(j.uuid for j, _ in after)), what="every result")
        assert proc.poll() is None  # the worker replaced its member
        late = logs(tmp_path, queue, 2, prefix="late")
        wait_for(lambda: settled(queue, *(j.uuid for j, _ in late)), what="jobs after the crash")
        assert proc.poll() is None
    finally:
        out = stop(proc)
    (lost,) = results(crash.uuid)
    assert lost.status == tables.LOST and lost.error_type == "WorkerLost" and not lost.retried
    assert "while running the job" in lost.error_message
    assert lost.queue == queue and lost.worker_id.startswith("native:") and lost.started_at is not None
    assert lines(crash_log) == ["ran"]  # not run again on redelivery
    ran_once(after)
    ran_once(late)
    assert ("SIGKILL" if how == "sigkill" else "exited with code 13") in out
    assert "was redelivered after its result was written; not run again" in out, out


def test_a_routed_job_killing_its_process_is_quarantined_then_retried_by_hand(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "crash")
    job = Crash(log, times=3).run_in_worker(queue=queue, retries=5)
    assert job is not None
    proc = start(worker_env(subprocess_env), queue)
    try:
        wait_for(lambda: len(results(job.uuid)) == 3 and settled(queue, job.uuid), what="the quarantine")
        # Not delivered again: a job behind it runs, the quarantined one does not.
        (ping, _), = logs(tmp_path, queue, 1, prefix="ping")
        wait_for(lambda: settled(queue, ping.uuid), what="a job after the quarantine")
        rows = results(job.uuid)
        assert [(r.attempt, r.status) for r in rows] == [(1, tables.LOST), (2, tables.LOST), (3, tables.QUARANTINED)]
        assert [r.retried for r in rows] == [True, True, False]
        assert "killed its worker process 3 times" in rows[-1].error_message
        assert rows[-1].error_type == "WorkerLost"
        assert lines(log) == ["ran"] * 3
        listed = CliRunner().invoke(cli, ["results", "--status", "quarantined"])
        assert listed.exit_code == 0 and job.uuid in listed.output, listed.output
        retried = CliRunner().invoke(cli, ["retry", job.uuid])
        assert retried.exit_code == 0 and "attempt 4" in retried.output, retried.output
        wait_for(lambda: len(results(job.uuid)) == 4 and settled(queue, job.uuid), what="the retry by hand")
    finally:
        stop(proc)
    assert results(job.uuid)[-1].status == tables.SUCCESSFUL
    assert lines(log) == ["ran"] * 4


def test_quarantine_after_one_on_a_routed_queue(queue: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "crash")
    job = Crash(log).run_in_worker(queue=queue, retries=5)
    assert job is not None
    proc = start(worker_env(subprocess_env, worker_quarantine_after=1), queue, "--max-processes", "2")
    try:
        wait_for(lambda: results(job.uuid) and settled(queue, job.uuid), what="the quarantine")
        after = logs(tmp_path, queue, 4)
        wait_for(lambda: settled(queue, *(j.uuid for j, _ in after)), what="jobs after it")
    finally:
        stop(proc)
    assert [r.status for r in results(job.uuid)] == [tables.QUARANTINED]
    assert lines(log) == ["ran"]
    ran_once(after)


def test_deaths_in_a_row_across_members_are_each_recorded_and_never_held_up(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Two members dying in turn: each replacement is forked while the
    supervisor holds the other member's broker socket, and must not keep a
    copy (the broker would hold that member's deliveries until it died)."""
    crashes, after = [], []
    for i in range(4):
        log = str(tmp_path / f"crash{i}")
        job = Crash(log).run_in_worker(queue=queue)
        assert job is not None
        crashes.append((job, log))
        for k in range(2):
            path = str(tmp_path / f"n{i}-{k}")
            slow = Log(path, f"n{i}-{k}", sleep=0.3).run_in_worker(queue=queue)  # heartbeats pass meanwhile
            assert slow is not None
            after.append((slow, path))
    proc = start(worker_env(subprocess_env), queue, "--max-processes", "2")
    try:
        wait_for(lambda: settled(queue, *(j.uuid for j, _ in crashes + after)), what="every result")
        assert proc.poll() is None
    finally:
        stop(proc)
    for job, log in crashes:
        assert [(r.status, r.error_type) for r in results(job.uuid)] == [(tables.LOST, "WorkerLost")]
        assert lines(log) == ["ran"]
    ran_once(after)


def test_a_member_killed_from_outside_records_its_job_and_its_prefetched_jobs_run_once(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    gate_log, release = str(tmp_path / "gate"), tmp_path / "release"
    gate = Gate(gate_log, str(release)).run_in_worker(queue=queue, retries=1)
    assert gate is not None
    behind = logs(tmp_path, queue, 3)  # prefetched (the first window is 4) and not started
    proc = start(worker_env(subprocess_env), queue)
    try:
        wait_for(lambda: lines(gate_log) == ["started"], what="the gate to start")
        assert all(lines(path) == [] for _, path in behind)
        (member,) = members(proc.pid)
        release.write_text("go")  # its retry passes the gate
        os.kill(member, signal.SIGKILL)
        wait_for(lambda: len(results(gate.uuid)) == 2 and settled(queue, gate.uuid, *(j.uuid for j, _ in behind)),
                 what="the gate's retry and the prefetched jobs")
        assert proc.poll() is None
    finally:
        out = stop(proc)
    first, second = results(gate.uuid)
    assert (first.status, first.error_type, first.retried) == (tables.LOST, "WorkerLost", True)
    assert "SIGKILL" in first.error_message
    assert (second.attempt, second.status) == (2, tables.SUCCESSFUL)
    assert lines(gate_log) == ["started", "started"]  # attempt 1, then its retry: never attempt 1 again
    ran_once(behind)
    assert "Traceback" not in out, out


def test_an_operator_kill_does_not_count_towards_quarantine(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    gate_log = str(tmp_path / "gate")
    release = tmp_path / "release"
    gate = Gate(gate_log, str(release)).run_in_worker(queue=queue, retries=1)
    assert gate is not None
    behind = logs(tmp_path, queue, 2)
    env = worker_env(subprocess_env, worker_shutdown_grace=1, worker_quarantine_after=1)
    proc = start(env, queue)
    try:
        wait_for(lambda: lines(gate_log) == ["started"], what="the gate to start")
    finally:
        out = stop(proc)  # the grace ends: the member is killed, by the operator's stop
    (lost,) = results(gate.uuid)
    # Not quarantined, even with quarantine after one kill: the job did not kill it.
    assert (lost.status, lost.error_type, lost.retried) == (tables.LOST, rescue_sql.WORKER_STOPPED, True), out
    (retry,) = requests()  # waits in the table for the relay, which the next worker runs
    assert (retry.task_id, retry.attempt) == (gate.uuid, 2)
    assert all(lines(path) == [] for _, path in behind)
    assert depth(queue) == 3  # back in the broker: attempt 1 (recorded) and the two prefetched ones
    release.write_text("go")
    proc = start(env, queue)
    try:
        wait_for(lambda: len(results(gate.uuid)) == 2 and settled(queue, gate.uuid, *(j.uuid for j, _ in behind)),
                 what="the retry and the prefetched jobs")
    finally:
        stop(proc)
    assert [(r.attempt, r.status) for r in results(gate.uuid)] == [(1, tables.LOST), (2, tables.SUCCESSFUL)]
    assert lines(gate_log) == ["started", "started"]
    ran_once(behind)


# -- the routed part of the ledger -------------------------------------------------------


def test_the_routed_part_keeps_started_jobs_until_flushed() -> None:
    part = RoutedJobs(8192, sockets=False)
    assert part.jobs() == ([], True)
    hostile = 'q\udcff\x00"é'
    assert part.start("q1", '{"headers": {}}', 1000.5)
    part.done(tables.SUCCESSFUL, retry=False)
    assert part.start(hostile, "m" * 100 + hostile, 1001.0)
    part.done(tables.ERRORED, retry=True)
    assert part.start("q3", "{}", 1002.0)  # running when the member died
    jobs, complete = part.jobs()
    assert complete
    assert [(j.queue, j.status, j.retry) for j in jobs] == [
        ("q1", tables.SUCCESSFUL, False), (hostile, tables.ERRORED, True), ("q3", "", False),
    ]
    assert jobs[1].message == "m" * 100 + hostile and jobs[0].started == 1000.5
    part.done("NOT A STATUS", retry=False)
    assert part.jobs()[0][2].status == "?"
    part.flushed()
    assert part.jobs() == ([], True)


def test_the_routed_part_asks_for_a_flush_when_full_and_marks_what_never_fits() -> None:
    part = RoutedJobs(8192, sockets=False)
    assert part.start("q", "x" * 5000, 1.0)
    part.done(tables.SUCCESSFUL, retry=False)
    assert not part.start("q", "y" * 5000, 2.0)  # flush the finished one first
    part.flushed()
    assert part.start("q", "y" * 5000, 2.0)
    part.done(tables.SUCCESSFUL, retry=False)
    part.flushed()
    assert part.start("q", "z" * 20000, 3.0)  # larger than the whole part: run, but not kept
    assert part.jobs() == ([], False)


def test_the_supervisor_holds_the_members_socket_until_told(tmp_path: Path) -> None:
    import socket

    part = RoutedJobs(8192)
    a, b = socket.socketpair()
    part.hand_socket(a)
    part.receive_sockets()
    (held,) = part.held
    a.close()
    os.write(held, b"still open")  # the copy keeps the connection
    assert b.recv(100) == b"still open"
    c, d = socket.socketpair()
    part.hand_socket(c)
    part.receive_sockets()
    assert len(part.held) == 1 and part.held != [held]  # only the newest is kept
    c.close()
    part.drop_socket()  # the member closed it: the copy goes too
    part.receive_sockets()
    assert part.held == []
    assert d.recv(100) == b""  # closed: the peer sees the end
    e, f = socket.socketpair()
    part.hand_socket(e)
    part.receive_sockets()
    e.close()
    part.close()  # the member's end recorded
    assert f.recv(100) == b""
    for sock in (b, d, f):
        sock.close()


def test_record_of_a_dead_routed_member_skips_attempts_already_written(db_url: str) -> None:
    """The member committed its batch and died before emptying its ledger:
    those attempts have their results, and are not recorded twice."""
    import json

    from jobtable import messages
    from jobtable.db import engine as db_engine
    from jobtable.routing import lost
    from jobtable.worker.routed_ledger import RoutedJob

    def message(task_id: str) -> str:
        envelope = {"body": "[[], {}, {}]", "content-encoding": "utf-8", "content-type": "application/json",
                    "headers": {"id": task_id, "task": "tests.poison_crash_jobs.Log", "retries": 0},
                    "properties": {}}
        return messages.dumps(envelope)

    now = clock.utcnow()
    jobs = [RoutedJob("q", message("written"), 1.0, tables.SUCCESSFUL), RoutedJob("q", message("running"), 2.0)]
    engine = db_engine.get_engine()
    with db_engine.connect(engine) as conn, conn.begin():
        from jobtable.db import result_rows

        row = lost.row_of(jobs[0], "native:x", -1, now)
        result_rows.insert_results(conn, [result_rows.result_values(row, tables.SUCCESSFUL, ended_at=now, retried=False)])
        assert lost.record_dead_member(conn, "native:x", jobs, True, now, why="it died", why_finished="after",
                                       poison=True, quarantine_after=3) == 1
    assert [r.status for r in results("written")] == [tables.SUCCESSFUL]
    (gone,) = results("running")
    assert (gone.status, gone.error_type, gone.error_message) == (tables.LOST, "WorkerLost", "it died")
    assert json.loads(gone.message)["headers"]["id"] == "running"
    assert query("SELECT count(*) FROM jobtable_request")[0][0] == 0
    assert ledgers.STATUSES  # the codes the routed part shares
