"""Jobs under a real Celery worker (``register_jobs``) behave as on the
native worker (issue 15, step 3): retries (``default_retries``,
``calculate_retry_delay``, ``run_in_worker(retries=)``) through Celery's
retry, ``DeferJob`` re-enqueued after its delay, the concurrency key held
across both, the attempt visible in ``current_job()``, and the same rows
in ``jobtable_result`` (the Celery worker writes them through the jobtable
result backend).  Each test runs the same Jobs through both doors and
compares with one expected table.  Job schedules fire from Celery workers,
once per slot across them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobtable.db import engine as db_engine
from jobtable.db import tables
from jobtable.exceptions import JobNotFound
from jobtable.records import wait_for as wait_result
from tests import celery_jobs_jobs as jobs
from tests.conftest import ALL_DIALECTS, ROOT
from tests.polling import terminate, wait_for

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

#: native: ``jobtable worker``; celery: a Celery worker acking early (Celery's
#: default); celery-acks-late: acking after the task (the held row keeps the key).
DOORS = ["native", "celery", "celery-acks-late"]


class Proc:
    """A worker process whose output goes to a file (never a full pipe)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> str:
        terminate(self.proc, timeout=30)
        out = self.text()
        print(out[-6000:], file=sys.stderr)  # shown when the test fails
        return out


def celery_worker(
    env: dict[str, str], tmp: Path, name: str, *, acks_late: bool = False, pool: str = "solo", **extra: str
) -> Proc:
    env = dict(env, JT_ACKS_LATE="1" if acks_late else "0", **extra)
    record = Path(env["JT_RECORD"])
    proc = Proc(
        [sys.executable, "-m", "celery", "-A", "tests.celery_jobs_app", "worker", "-P", pool, "-c", "2", "-Q", jobs.QUEUE,
         "-l", "info", "-n", f"{name}{os.getpid()}@%h"],
        env, tmp / f"{name}.log",
    )
    wait_for(lambda: proc.proc.poll() is not None or f"READY {proc.proc.pid}" in _read(record), timeout=60,
             what=f"Celery worker {name} ready")
    assert proc.proc.poll() is None, proc.text()
    return proc


def native_worker(env: dict[str, str], tmp: Path, app: str = "tests.celery_jobs_jobs") -> Proc:
    env = dict(env, JOBTABLE_WORKER_LOST_AFTER="2", JOBTABLE_WORKER_SHUTDOWN_GRACE="10")
    return Proc(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", app, "worker",
         "--queue", jobs.QUEUE, "--max-processes", "1"],
        env, tmp / "native.log",
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture
def env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return dict(subprocess_env, JT_RECORD=str(tmp_path / "record.txt"))


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], Proc]]:
    """Starts the worker of a door; stops it at the end."""
    started: list[Proc] = []

    def run(door: str) -> Proc:
        proc = native_worker(env, tmp_path) if door == "native" else celery_worker(
            env, tmp_path, door, acks_late="acks-late" in door, pool="prefork" if "prefork" in door else "solo"
        )
        started.append(proc)
        return proc

    yield run
    for proc in started:
        proc.stop()


def results(uuid: str) -> list[tuple[Any, ...]]:
    """The result rows of ``uuid`` as both doors must write them."""
    r = tables.result
    stmt = select(r).where(r.c.task_id == uuid).order_by(r.c.attempt)
    with db_engine.get_engine().connect() as conn:
        return [
            (row.attempt, row.status, row.retried, row.retries, row.concurrency_key, row.error_type, row.error_message)
            for row in conn.execute(stmt)
        ]


def seen(path: Path, tag: str) -> list[str]:
    """What ``current_job()`` said in each attempt of ``tag``: attempt, retries, key."""
    return [line.split(" ", 1)[1] for line in _read(path).splitlines() if line.split(" ", 1)[0] == tag]


def finished(uuid: str, timeout: float = 60) -> Any:
    """The job's final result.  Polled, not ``request.wait()``: a Celery
    worker acking early deletes the request row when an attempt starts, so
    until its result is written the uuid is unknown (JobNotFound), or its
    last result is the retried attempt before it."""

    def look() -> Any:
        try:
            found = wait_result(uuid, 0)
        except (TimeoutError, JobNotFound):
            return None
        return None if found.retried else found

    return wait_for(look, timeout, what=f"job {uuid} finished")


NOT_YET = "tests.celery_jobs_jobs.NotYet"
DEFER = "jobtable.jobs.DeferJob"
E, D, S = tables.ERRORED, tables.DEFERRED, tables.SUCCESSFUL


@pytest.mark.parametrize("door", DOORS)
def test_retries_and_deferrals_as_on_the_native_worker(
    db_url: str, start: Callable[[str], Proc], tmp_path: Path, door: str
) -> None:
    path = tmp_path / "runs.txt"
    p = str(path)
    sent = {
        "fails": jobs.FailsTwice(p, "fails").run_in_worker(),
        "always": jobs.AlwaysFails(p, "always").run_in_worker(),
        "given": jobs.AlwaysFails(p, "given").run_in_worker(retries=2),  # run_in_worker's retries win
        "defers": jobs.DefersTwice(p, "defers").run_in_worker(),
        "counted": jobs.DefersCounted(p, "counted").run_in_worker(),
    }
    start(door)
    ended = {tag: finished(request.uuid).status for tag, request in sent.items() if request is not None}
    assert ended == {"fails": S, "always": E, "given": E, "defers": S, "counted": E}
    rows = {tag: results(request.uuid) for tag, request in sent.items() if request is not None}
    assert rows == {
        "fails": [
            (1, E, True, 3, None, NOT_YET, "fails not yet"),
            (2, E, True, 3, None, NOT_YET, "fails not yet"),
            (3, S, False, 3, None, None, None),
        ],
        "always": [(1, E, True, 1, None, NOT_YET, "always always"), (2, E, False, 1, None, NOT_YET, "always always")],
        "given": [
            (1, E, True, 2, None, NOT_YET, "given always"),
            (2, E, True, 2, None, NOT_YET, "given always"),
            (3, E, False, 2, None, NOT_YET, "given always"),
        ],
        # A deferral uses up no retry: each next attempt has one more.
        "defers": [
            (1, D, True, 0, None, None, "deferred for 0.2 s"),
            (2, D, True, 1, None, None, "deferred for 0.2 s"),
            (3, S, False, 2, None, None, None),
        ],
        # increment_retries=True: the second deferral has no retry left.
        "counted": [(1, D, True, 1, None, None, "deferred for 0.1 s"), (2, E, False, 1, None, DEFER, "deferred for 0.1 s")],
    }
    # The attempt (and its retry budget) the Job saw, as on the native worker.
    assert seen(path, "fails") == ["1 3 -", "2 3 -", "3 3 -"]
    assert seen(path, "given") == ["1 2 -", "2 2 -", "3 2 -"]
    assert seen(path, "defers") == ["1 0 -", "2 1 -", "3 2 -"]
    assert seen(path, "counted") == ["1 1 -", "2 1 -"]


@pytest.mark.parametrize("door", [*DOORS, "celery-prefork-acks-late"])  # prefork: the retry is sent from a child
@pytest.mark.parametrize("kind", ["defer", "retry"])
def test_deferred_or_retried_job_keeps_its_concurrency_key(
    db_url: str, start: Callable[[str], Proc], tmp_path: Path, door: str, kind: str
) -> None:
    """While the next attempt waits, the key is still held (a duplicate is
    refused); the job runs twice (its two attempts), never lost."""
    path = tmp_path / "runs.txt"
    make = (lambda: jobs.KeyedDefer(str(path), "k")) if kind == "defer" else (lambda: jobs.KeyedRetry(str(path), "k"))
    key = "kd-k" if kind == "defer" else "kr-k"
    first = make().run_in_worker()
    assert first is not None
    start(door)
    r = tables.request

    def waiting_second_attempt() -> bool:
        with db_engine.get_engine().connect() as conn:
            rows = list(conn.execute(select(r).where(r.c.task_id == first.uuid)))
        return len(rows) == 1 and rows[0].attempt == 2 and rows[0].state in (tables.SCHEDULED, tables.PENDING)

    wait_for(waiting_second_attempt, timeout=60, what="the second attempt waiting")
    assert make().run_in_worker() is None  # the key is held by the waiting attempt
    assert finished(first.uuid).status == S
    status, message = (D, "deferred for 2 s") if kind == "defer" else (E, "first attempt fails")
    budget = (0, 1) if kind == "defer" else (1, 1)
    assert results(first.uuid) == [
        (1, status, True, budget[0], key, None if kind == "defer" else NOT_YET, message),
        (2, S, False, budget[1], key, None, None),
    ]
    assert seen(path, "k") == [f"1 {budget[0]} {key}", f"2 {budget[1]} {key}"]

    def no_rows_left() -> bool:  # an acks_late ack is written a moment after the result
        with db_engine.get_engine().connect() as conn:
            return list(conn.execute(select(r))) == []

    wait_for(no_rows_left, timeout=30, what="no request row left behind")


@pytest.mark.parametrize("door", ["native", "celery"])
def test_hostile_retry_delays_retry_at_once(db_url: str, start: Callable[[str], Proc], tmp_path: Path, door: str) -> None:
    """calculate_retry_delay returning NaN, inf, 1e300, a negative number or
    a string, or raising: logged, and the retry happens at once (a delay
    that cannot be a time is not a reason to lose the job or wait forever)."""
    path = tmp_path / "runs.txt"
    kinds = ["nan", "inf", "huge", "negative", "text", "raises"]
    sent = {kind: jobs.HostileDelay(str(path), kind, kind).run_in_worker() for kind in kinds}
    # DeferJob with a delay that is no time: one ERRORED attempt naming it.
    defers = {kind: jobs.HostileDefer(str(path), f"d-{kind}", kind).run_in_worker() for kind in ("nan", "inf", "huge")}
    proc = start(door)
    for kind, request in sent.items():
        assert request is not None
        assert finished(request.uuid, timeout=60).status == S, kind
        assert [row[:3] for row in results(request.uuid)] == [(1, E, True), (2, S, False)], kind
    for kind, request in defers.items():
        assert request is not None
        assert finished(request.uuid, timeout=60).status == E, kind
        ((attempt, status, retried, *_, error_type, message),) = results(request.uuid)
        assert (attempt, status, retried) == (1, E, False), kind
        assert error_type.endswith("EnqueueError") and message.startswith("DeferJob: delay="), (kind, message)
    assert "calculate_retry_delay of tests.celery_jobs_jobs.HostileDelay failed" in proc.text()


def test_cancel_of_a_job_a_celery_worker_runs_names_celerys_revoke(
    db_url: str, start: Callable[[str], Proc], tmp_path: Path
) -> None:
    """The CLI refuses as the Job API does: the Celery worker does not read
    jobtable's cancel marks."""
    from click.testing import CliRunner

    from jobtable.cli import main

    path = tmp_path / "runs.txt"
    request = jobs.Sleeps(str(path), "sleeps").run_in_worker()
    assert request is not None
    worker = start("celery-acks-late")
    wait_for(lambda: seen(path, "sleeps"), timeout=60, what="the job running")
    result = CliRunner().invoke(main, ["cancel", request.uuid])
    assert result.exit_code == 1, result.output
    assert "revoke(id, terminate=True)" in result.output
    # Celery's cold shutdown: a warm one would wait out the minute-long job.
    worker.proc.send_signal(signal.SIGQUIT)
    worker.proc.wait(timeout=30)


# -- schedules ---------------------------------------------------------------------------


def ticks(record: Path) -> list[float]:
    return [float(line.split()[1]) for line in _read(record).splitlines() if line.startswith("tick ")]


def test_job_schedules_fire_from_celery_workers_once_per_slot(
    db_url: str, env: dict[str, str], tmp_path: Path
) -> None:
    """Two Celery workers, no jobtable worker: an every-2-s Job schedule
    fires, each slot once (two runs of one slot would be milliseconds
    apart), both workers running the scheduler."""
    # One prefork worker: its scheduler thread runs beside the pool's forks.
    workers = [
        celery_worker(env, tmp_path, f"sched{i}", pool=pool, JT_SCHEDULED="1")
        for i, pool in enumerate(["solo", "prefork"])
    ]
    try:
        wait_for(lambda: len(ticks(Path(env["JT_RECORD"]))) >= 4, timeout=60, what="four slots fired")
    finally:
        logs = [worker.stop() for worker in workers]
    times = ticks(Path(env["JT_RECORD"]))
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) > 1.0, times
    for log in logs:
        assert "this Celery worker fires 1 Job schedule entry" in log


def test_schedules_false_warns_at_start_and_fires_nothing(db_url: str, env: dict[str, str], tmp_path: Path) -> None:
    worker = celery_worker(env, tmp_path, "nosched", JT_SCHEDULED="1", JT_SCHEDULES="0")
    try:
        wait_for(lambda: "does not fire the 1 Job schedule entry" in worker.text(), timeout=30, what="the warning")
        text = worker.text()
        with db_engine.get_engine().connect() as conn:
            assert list(conn.execute(select(tables.schedule))) == []  # no scheduler ever ticked
    finally:
        worker.stop()
    assert "tests.celery_jobs_app.Every2s" in text and "jobtable worker" in text


def test_a_celery_worker_whose_job_schedules_cannot_load_stops(db_url: str, env: dict[str, str], tmp_path: Path) -> None:
    """As `jobtable worker` refuses to start: a Celery worker that fires Job
    schedules exits non-zero naming the bad entry and the fix, rather than
    running on with none of them (a signal handler's error is only logged)."""
    bad = dict(env, JT_SCHEDULED="1", JOBTABLE_SCHEDULE='[["tests.celery_jobs_app.NoSuchJob", "@daily"]]')
    proc = Proc(
        [sys.executable, "-m", "celery", "-A", "tests.celery_jobs_app", "worker", "-P", "solo", "-Q", jobs.QUEUE,
         "-l", "info", "-n", f"badsched{os.getpid()}@%h"],
        bad, tmp_path / "badsched.log",
    )
    try:
        assert proc.proc.wait(timeout=60) == 1, proc.text()
    finally:
        proc.stop()
    text = proc.text()
    assert "the Job schedules cannot load, so this Celery worker stops" in text
    assert "NoSuchJob" in text and "schedules=False" in text
