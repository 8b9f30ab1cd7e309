"""Jobs that kill their worker process: the started one is LOST exactly once
(never silently pending again), its batch neighbours run exactly once, a job
that keeps killing its process is QUARANTINED, and a killed worker's batch is
rescued from its ledger by a peer on the same machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobtable.cli import main as cli
from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, rescue_sql, tables, workers_sql
from jobtable.worker import ledger as ledgers
from jobtable.worker import rescue

from tests.dashboard_client import client
from tests.conftest import ALL_DIALECTS
from tests.poison_crash_jobs import BreakMember, Crash, Gate, Log, Pid
from tests.worker_jobs import ROOT, Boom, lines, query, requests, results, stop, wait_for, worker_env

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def start(env: dict[str, str], *args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.poison_crash_jobs", "worker",
         "--max-processes", "1", *args],
        env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


def neighbours(tmp_path: Path, n: int = 3, **options: Any) -> list[tuple[Any, str]]:
    out = []
    for i in range(n):
        path = str(tmp_path / f"n{i}")
        job = Log(path, f"n{i}").run_in_worker(**options)
        assert job is not None
        out.append((job, path))
    return out


def finished(*uuids: str) -> bool:
    return all(results(u) for u in uuids) and not requests()


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_crash_is_lost_once_and_its_neighbours_run_once(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    crash_log = str(tmp_path / "crash")
    crash = Crash(crash_log, how=how).run_in_worker()
    assert crash is not None
    after = neighbours(tmp_path)  # claimed in the same batch, behind the crash
    proc = start(worker_env(subprocess_env))
    try:
        wait_for(lambda: finished(crash.uuid, *(j.uuid for j, _ in after)), what="every result")
        assert proc.poll() is None  # the worker replaced its member
        late = Log(str(tmp_path / "late"), "late").run_in_worker()
        assert late is not None
        wait_for(lambda: results(late.uuid), what="a job after the crash")
    finally:
        out = stop(proc)
    (lost,) = results(crash.uuid)
    assert lost.status == tables.LOST and lost.error_type == "WorkerLost" and not lost.retried
    assert "while running the job" in lost.error_message
    assert lines(crash_log) == ["ran"]
    for job, path in after:
        assert [r.status for r in results(job.uuid)] == [tables.SUCCESSFUL]
        assert len(lines(path)) == 1
    assert ("SIGKILL" if how == "sigkill" else "exited with code 13") in out


def native_workers() -> set[str]:
    return {row.id for row in query("SELECT id FROM jobtable_worker WHERE kind = 'native'")}


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_spare_member_takes_the_place_of_one_that_died(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    proc = start(worker_env(subprocess_env))  # one member; a spare once one had to be replaced
    try:
        first = Pid(str(tmp_path / "first")).run_in_worker()
        assert first is not None
        wait_for(lambda: results(first.uuid), what="the first job")
        assert len(children(proc.pid)) == 1  # no spare while no member was lost
        earlier = Crash(str(tmp_path / "earlier")).run_in_worker()
        assert earlier is not None
        wait_for(lambda: results(earlier.uuid), what="the first crash")
        second = Pid(str(tmp_path / "second")).run_in_worker()
        assert second is not None
        wait_for(lambda: results(second.uuid) and len(children(proc.pid)) == 2, what="the member and its spare")
        (member,) = map(int, lines(tmp_path / "second"))
        before = children(proc.pid)
        (spare,) = before - {member}
        assert len(native_workers()) == 1  # a spare is no worker until it takes a place
        crash = Crash(str(tmp_path / "crash")).run_in_worker()
        assert crash is not None
        wait_for(lambda: results(crash.uuid), what="the crash")
        late = Pid(str(tmp_path / "late")).run_in_worker()
        assert late is not None
        wait_for(lambda: results(late.uuid), what="a job after the crash")
        # The job after the crash ran in the spare, forked before it: no
        # fork, import or connection stood between the death and the next job.
        assert list(map(int, lines(tmp_path / "late"))) == [spare]
        (lost,) = results(crash.uuid)
        (ok,) = results(late.uuid)
        assert lost.status == tables.LOST and ok.status == tables.SUCCESSFUL and ok.worker_id != lost.worker_id
        # ... a new spare is forked; the dead member's row is gone, the spare's is there.
        wait_for(lambda: len(children(proc.pid) - before) == 1, what="a new spare")
        assert native_workers() == {ok.worker_id}
    finally:
        stop(proc)
    assert native_workers() == set()


def test_deaths_in_a_row_are_each_recorded(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """Members dying one after the other, each before the supervisor is done
    recording the one before (a replacement forked while it reaps can die
    within the same reaping): every death is recorded, nothing stays running."""
    crashes = [Crash(str(tmp_path / f"c{i}")).run_in_worker() for i in range(6)]
    after = neighbours(tmp_path, 2)
    proc = start(worker_env(subprocess_env))
    try:
        wait_for(lambda: finished(*(c.uuid for c in crashes if c), *(j.uuid for j, _ in after)), what="every result")
    finally:
        out = stop(proc)
    for i, crash in enumerate(crashes):
        assert crash is not None
        assert [(r.status, r.error_type) for r in results(crash.uuid)] == [(tables.LOST, "WorkerLost")]
        assert lines(tmp_path / f"c{i}") == ["ran"]
    assert out.count("exited with code 13.") == 6  # one death logged per crash
    for job, path in after:
        assert [r.status for r in results(job.uuid)] == [tables.SUCCESSFUL] and len(lines(path)) == 1


def test_finished_but_unwritten_jobs_keep_their_status_and_are_not_run_again(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    # One claimed batch (the first holds 4): a job that fails for good and
    # two that succeed run before the crash; the last, fast, is not flushed
    # yet (a slow job's result is flushed before the next job starts).
    boom_log = str(tmp_path / "boom")
    boom = Boom(boom_log).run_in_worker()
    assert boom is not None
    before = neighbours(tmp_path, 2, retries=2)
    crash = Crash(str(tmp_path / "crash")).run_in_worker()
    assert crash is not None
    proc = start(worker_env(subprocess_env))
    try:
        wait_for(lambda: finished(crash.uuid, boom.uuid, *(j.uuid for j, _ in before)), what="every result")
    finally:
        stop(proc)
    statuses = []
    for job, path in before:
        (row,) = results(job.uuid)
        assert len(lines(path)) == 1
        statuses.append((row.status, row.error_type))
        assert row.status == tables.SUCCESSFUL and not row.retried
        if row.error_type == "ResultLost":  # finished, its result died with the process
            assert row.return_value is None
            assert "return value was lost" in row.error_message and "after the job had finished" in row.error_message
        else:
            assert row.error_type is None and row.return_value is not None
    (failed,) = results(boom.uuid)
    assert failed.status == tables.ERRORED and not failed.retried and len(lines(boom_log)) == 1
    statuses.append((failed.status, failed.error_type))
    if failed.error_type == "ResultLost":
        assert "ended ERRORED" in failed.error_message
    assert ("ResultLost" in {t for _, t in statuses}), statuses  # at least the one just before the crash
    assert [(r.status, r.error_type) for r in results(crash.uuid)] == [(tables.LOST, "WorkerLost")]


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_member_dying_of_an_error_records_its_job_lost(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    log = str(tmp_path / "break")
    broken = BreakMember(log).run_in_worker(retries=3)
    assert broken is not None
    after = neighbours(tmp_path)
    proc = start(worker_env(subprocess_env), "--pool", pool)
    try:
        wait_for(lambda: finished(broken.uuid, *(j.uuid for j, _ in after)), what="every result")
        assert proc.poll() is None
    finally:
        out = stop(proc)
    rows = results(broken.uuid)
    # Retried (it has retries), but never silently pending again: every run is an attempt with a result.
    assert len(lines(log)) == len(rows) == 3
    assert [r.status for r in rows] == [tables.LOST, tables.LOST, tables.QUARANTINED]
    for job, path in after:
        assert [r.status for r in results(job.uuid)] == [tables.SUCCESSFUL] and len(lines(path)) == 1
    assert "the member breaks" in out


def test_quarantine_after_three_kills_then_retry_by_hand(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "crash")
    job = Crash(log, times=3).run_in_worker(retries=5)
    assert job is not None
    proc = start(worker_env(subprocess_env))
    try:
        wait_for(lambda: len(results(job.uuid)) == 3 and not requests(), what="the quarantine")
        rows = results(job.uuid)
        assert [(r.attempt, r.status) for r in rows] == [
            (1, tables.LOST), (2, tables.LOST), (3, tables.QUARANTINED),
        ]
        assert [r.retried for r in rows] == [True, True, False]
        q = rows[-1]
        assert "killed its worker process 3 times" in q.error_message
        assert f"jobtable retry {job.uuid}" in q.error_message and q.error_type == "WorkerLost"
        assert lines(log) == ["ran"] * 3
        listed = CliRunner().invoke(cli, ["results", "--status", "quarantined"])
        assert listed.exit_code == 0, listed.output
        assert job.uuid in listed.output and "QUARANTINED" in listed.output
        retried = CliRunner().invoke(cli, ["retry", job.uuid])
        assert retried.exit_code == 0, retried.output
        assert "attempt 4" in retried.output
        wait_for(lambda: len(results(job.uuid)) == 4, what="the retry by hand")
    finally:
        stop(proc)
    assert results(job.uuid)[-1].status == tables.SUCCESSFUL
    assert lines(log) == ["ran"] * 4


def test_quarantine_after_one(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "crash")
    job = Crash(log).run_in_worker(retries=5)
    assert job is not None
    proc = start(worker_env(subprocess_env, worker_quarantine_after=1))
    try:
        wait_for(lambda: results(job.uuid) and not requests(), what="the quarantine")
        # A job recorded QUARANTINED is not claimed again, even by a second worker.
        other = start(worker_env(subprocess_env, worker_quarantine_after=1))
        try:
            ping = Log(str(tmp_path / "ping"), "ping").run_in_worker()
            assert ping is not None
            wait_for(lambda: results(ping.uuid), what="a job after the quarantine")
        finally:
            stop(other)
    finally:
        stop(proc)
    assert [r.status for r in results(job.uuid)] == [tables.QUARANTINED]
    assert "killed its worker process 1 time " in results(job.uuid)[0].error_message
    assert lines(log) == ["ran"]


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_killed_worker_is_rescued_from_its_ledger(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    gate_log, release = str(tmp_path / "gate"), str(tmp_path / "release")
    gate = Gate(gate_log, release).run_in_worker()
    assert gate is not None
    after = neighbours(tmp_path)  # claimed with the gate, not started
    env = worker_env(subprocess_env, worker_lost_after=2)
    first = start(env, "--pool", pool, start_new_session=True)
    try:
        wait_for(lambda: lines(gate_log) == ["started"], what="the gate job to start")
        os.killpg(first.pid, signal.SIGKILL)  # supervisor and members
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    Path(release).write_text("x")
    second = start(env, "--pool", pool)
    try:
        wait_for(lambda: finished(gate.uuid, *(j.uuid for j, _ in after)), what="the rescue")
    finally:
        out = stop(second)
    (lost,) = results(gate.uuid)
    assert lost.status == tables.LOST and lost.error_type == "WorkerLost"
    # Found dead at once (its lock or pid), or by its silent heartbeat.
    assert ("died" in lost.error_message or "heartbeats" in lost.error_message), out
    assert "while running the job" in lost.error_message, out
    assert lines(gate_log) == ["started"]
    for job, path in after:
        assert [r.status for r in results(job.uuid)] == [tables.SUCCESSFUL] and len(lines(path)) == 1
    # The killed worker's ledger goes with the sweep once the database no
    # longer knows the worker (the second worker's first sweep may already
    # have come after the rescue).
    _, dead = ledgers.stale_files(ledgers.scope_of(db_url))
    mine = {worker_id: path for worker_id, path in dead.items() if f":{first.pid}:" in worker_id}
    with db_engine.connect() as conn:
        assert workers_sql.workers_referenced(conn, list(mine)) == set()
    ledgers.remove(list(mine.values()))


# -- the ledger as a rescuer reads it (real files, real database) ---------------


def _claimed_by_dead_worker(worker_id: str, n: int = 3) -> list[Any]:
    for i in range(n):
        assert Log("/dev/null", f"j{i}").run_in_worker() is not None
    long_ago = clock.utcnow().replace(year=2000)
    with db_engine.connect() as conn, conn.begin():
        workers_sql.register_worker(conn, worker_id, hostname="h", pid=1, queues=["default"], processes=1, now=long_ago)
        rows = claims_sql.claim(conn, ["default"], n, worker_id=worker_id, now=long_ago)
    assert len(rows) == n
    return rows


def _rescue() -> int:
    with db_engine.connect() as conn, conn.begin():
        return rescue.rescue_dead(conn, 30, clock.utcnow())


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "magic":
        path.write_bytes(b"XXXXXXXX" + data[8:])
    elif how == "count":  # more entries than the ledger holds
        path.write_bytes(data[:24] + (10**9).to_bytes(8, "little") + data[32:])
    elif how == "other-worker":
        path.write_bytes(data.replace(b"native:dead", b"native:deaf"))
    elif how == "other-boot":
        path.write_bytes(data[:48] + b"0" * 48 + data[96:])
    elif how == "directory":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize(
    "how", ["intact", "missing", "truncated", "empty", "magic", "count", "other-worker", "other-boot", "directory"]
)
def test_rescue_falls_back_when_the_ledger_is_unusable(db_url: str, how: str) -> None:
    worker_id = f"native:dead:{os.getpid()}:0:{how}"
    rows = _claimed_by_dead_worker(worker_id)
    book = ledgers.Ledger.create(worker_id, 10)
    assert book.path is not None
    book.start(rows[0].id)
    try:
        _damage(book.path, how)
        lost = _rescue()
    finally:
        if book.path.is_dir():
            book.path.rmdir()
        book.close()
    statuses = {r.task_id: r.status for r in results()}
    if how == "intact":
        assert lost == 1 and statuses == {rows[0].task_id: tables.LOST}
        assert [r.state for r in requests()] == [tables.PENDING, tables.PENDING]
    else:  # the conservative rescue: all LOST, none run twice
        assert lost == 3 and set(statuses.values()) == {tables.LOST} and len(statuses) == 3
        assert "unknown here" in results()[0].error_message
        assert requests() == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=2047))
def test_reading_any_bytes_never_raises(tmp_path: Path, data: bytes, cut: int) -> None:
    worker_id = f"native:fuzz:{os.getpid()}:0:x"
    book = ledgers.Ledger.create(worker_id, 4)
    assert book.path is not None
    try:
        book.path.write_bytes(data)
        assert ledgers.read(worker_id) is None or data[:8] == ledgers.MAGIC
        real = ledgers.Ledger.create(worker_id, 4)
        real.start(7)
        real.done(retry=True)
        real.start(8)
        assert ledgers.read(worker_id) == ledgers.LedgerState(running=[8], finished_retry=[7])
        assert real.path is not None
        whole = real.path.read_bytes()
        real.path.write_bytes(whole[:cut] + data[: len(whole) - cut])
        state = ledgers.read(worker_id)
        assert state is None or isinstance(state, ledgers.LedgerState)
        real.close()
    finally:
        book.close()


def test_ledger_flush_keeps_a_job_that_never_returned() -> None:
    book = ledgers.Ledger.create(f"native:unit:{os.getpid()}:0:y", 3)
    try:
        for row_id in (1, 2, 3, 4):  # one more than it holds
            book.start(row_id)
            book.done()
        assert not book.state().complete
        book.flushed()
        assert book.state() == ledgers.LedgerState()
        book.start(5)
        book.done()
        book.start(6)  # crashed out of it
        book.flushed()
        assert book.state() == ledgers.LedgerState(running=[6])
    finally:
        book.close()


def test_rescue_records_finished_jobs_with_the_status_the_ledger_kept(db_url: str) -> None:
    worker_id = f"native:dead:{os.getpid()}:0:statuses"
    rows = _claimed_by_dead_worker(worker_id, 5)
    with db_engine.connect() as conn, conn.begin():  # one of them a dead letter
        conn.execute(tables.request.update().where(tables.request.c.id == rows[2].id).values(message="not json"))
    book = ledgers.Ledger.create(worker_id, 10)
    try:
        for row, status in zip(rows, [tables.SUCCESSFUL, tables.ERRORED, tables.DEAD_LETTER]):
            book.start(row.id)
            book.done(status=status)
        book.start(rows[3].id)  # running when the worker died; rows[4] never started
        assert book.state().statuses == {
            rows[0].id: tables.SUCCESSFUL, rows[1].id: tables.ERRORED, rows[2].id: tables.DEAD_LETTER,
        }
        assert _rescue() == 4
    finally:
        book.close()
    got = {r.task_id: r for r in results()}
    assert len(got) == 4
    ok, failed, dead, running = (got[row.task_id] for row in rows[:4])
    assert (ok.status, ok.error_type, ok.return_value) == (tables.SUCCESSFUL, "ResultLost", None)
    assert "return value was lost" in ok.error_message and "after the job had finished" in ok.error_message
    assert (failed.status, failed.error_type) == (tables.ERRORED, "ResultLost") and not failed.retried
    assert (dead.status, dead.error_type) == (tables.DEAD_LETTER, "UndecodableMessage")
    assert (running.status, running.error_type) == (tables.LOST, "WorkerLost")
    assert [(r.task_id, r.state) for r in requests()] == [(rows[4].task_id, tables.PENDING)]


def test_recorded_finished_jobs_keep_their_request_columns_and_only_rows_still_held(db_url: str) -> None:
    """record_finished copies each row's request columns into its result
    (server-side on PostgreSQL) and touches only rows still running under the
    dead worker: one finished meanwhile, or taken by another id, is left alone."""
    worker_id = f"native:dead:{os.getpid()}:0:copy"
    rows = _claimed_by_dead_worker(worker_id, 4)
    with db_engine.connect() as conn, conn.begin():
        conn.execute(tables.request.delete().where(tables.request.c.id == rows[2].id))  # written meanwhile
        conn.execute(tables.request.update().where(tables.request.c.id == rows[3].id).values(worker_id="someone-else"))
    statuses = {rows[0].id: tables.SUCCESSFUL, rows[1].id: tables.ERRORED, rows[2].id: tables.SUCCESSFUL,
                rows[3].id: tables.SUCCESSFUL}
    with db_engine.connect() as conn, conn.begin():
        assert rescue.record_finished(conn, worker_id, statuses, clock.utcnow(), why="it \x00 died") == 2
    got = {r.task_id: r for r in results()}
    assert sorted(got) == sorted([rows[0].task_id, rows[1].task_id])
    for row, status in zip(rows[:2], [tables.SUCCESSFUL, tables.ERRORED]):
        res = got[row.task_id]
        assert (res.status, res.error_type, res.retried) == (status, "ResultLost", False)
        assert (res.task_name, res.queue, res.priority, res.attempt, res.retries, res.worker_id, res.message) == (
            row.task_name, row.queue, row.priority, row.attempt, row.retries, worker_id, row.message)
        assert res.started_at == row.started_at and res.requested_at == row.created_at
        assert res.return_value is None and res.traceback is None
        assert f"The job ended {status}" in res.error_message and "It was not run again." in res.error_message
    assert {r.task_id: r.worker_id for r in requests()} == {rows[3].task_id: "someone-else"}


def test_a_ledger_of_the_first_format_is_still_read(db_url: str) -> None:
    """A worker of the version before wrote no statuses: its finished jobs
    are recorded LOST (ResultLost), as that version did; nothing runs twice."""
    worker_id = f"native:dead:{os.getpid()}:0:v1"
    rows = _claimed_by_dead_worker(worker_id, 3)
    book = ledgers.Ledger.create(worker_id, 4)
    assert book.path is not None
    try:
        book.start(rows[0].id)
        book.done(status=tables.SUCCESSFUL)
        book.start(rows[1].id)
        data = book.path.read_bytes()
        book.path.write_bytes(ledgers.MAGIC_V1 + data[8 : ledgers.HEADER_SIZE + 4 * 8])  # no status array
        assert ledgers.read(worker_id) == ledgers.LedgerState(running=[rows[1].id], finished=[rows[0].id])
        assert _rescue() == 2
    finally:
        book.close()
    got = {r.task_id: (r.status, r.error_type) for r in results()}
    assert got == {rows[0].task_id: (tables.LOST, "ResultLost"), rows[1].task_id: (tables.LOST, "WorkerLost")}
    assert [r.state for r in requests()] == [tables.PENDING]


# -- the dashboard ----------------------------------------------------------------


def test_dashboard_shows_and_retries_a_quarantined_job(db_url: str) -> None:
    worker_id = "native:dash:1:0:z"
    (row,) = _claimed_by_dead_worker(worker_id, 1)
    with db_engine.connect() as conn, conn.begin():
        rescue_sql.lose(conn, worker_id, None, clock.utcnow(), message="died", quarantine_after=1,
                   quarantine_message=rescue.Quarantine("it died", 1))
    (q,) = results()
    assert q.status == tables.QUARANTINED
    dash = client()
    listed = dash.get("/results?status=QUARANTINED")
    assert listed.status_code == 200 and q.task_id in listed.text and "status-quarantined" in listed.text
    assert row.task_id not in dash.get("/results?status=LOST").text
    overview = dash.get("/").text
    assert 'data-card="quarantined"' in overview and "/results?status=QUARANTINED" in overview
    page = dash.get(f"/results/{q.id}")
    assert page.status_code == 200 and "QUARANTINED" in page.text
    assert "killed its worker process 1 time " in page.text and 'data-action="retry"' in page.text
    assert dash.act("retry", [q.id], next=f"/results/{q.id}").status_code == 303
    assert [(r.task_id, r.attempt, r.state) for r in requests()] == [(q.task_id, 2, tables.PENDING)]


def test_sweep_finds_only_rescued_ledgers_of_its_database(db_url: str, tmp_path: Path) -> None:
    scope = ledgers.scope_of(db_url)
    tag = f"{os.getpid()}-{tmp_path.name}"  # tests in parallel share the directory
    gone = f"native:gone:1:0:{tag}"
    made = subprocess.run(
        [sys.executable, "-c",
         "import sys; from jobtable.worker.ledger import Ledger; print(Ledger.create(sys.argv[1], 4, sys.argv[2]).path)",
         gone, scope],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
    )
    path = Path(made.stdout.strip())
    live = ledgers.Ledger.create(f"native:live:1:0:{tag}", 4, scope)  # our pid: alive
    junk = path.parent / f"garbage-{tag}{ledgers.SUFFIX}"
    junk.write_bytes(b"\x00garbage")
    os.utime(junk, (0, 0))
    try:
        old, dead = ledgers.stale_files(scope)
        assert dead.get(gone) == path and f"native:live:1:0:{tag}" not in dead
        assert junk in old and path not in old
        assert gone not in ledgers.stale_files("another database")[1]
        with db_engine.connect() as conn, conn.begin():
            assert workers_sql.workers_referenced(conn, [gone]) == set()
            workers_sql.register_worker(conn, gone, hostname="h", pid=1, queues=["default"], processes=1, now=clock.utcnow())
            assert workers_sql.workers_referenced(conn, [gone]) == {gone}
    finally:
        ledgers.remove([path, junk])
        live.close()
    assert not path.exists() and not junk.exists()
