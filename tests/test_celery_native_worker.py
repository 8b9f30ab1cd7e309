"""Celery tasks on the native worker: ``jobtable worker --celery-app`` runs
them through Celery's tracer.  Tasks are sent with real Celery over the
jobtable broker, results read with AsyncResult through the jobtable backend,
signals recorded into a file by the app module (SQLite and PostgreSQL)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group, states
from celery.exceptions import ChordError, TaskRevokedError, TimeLimitExceeded
from celery.result import AsyncResult
from sqlalchemy import select

from jobtable.db import tables
from jobtable.db.engine import get_engine
from tests.conftest import ROOT, empty_tables
from tests.polling import terminate, wait_for
from tests.worker_jobs import lines

APP = "tests.celery_native_app:app"


class NativeWorker:
    """A ``jobtable worker --celery-app`` process; output in a file (never a full pipe)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobtable", "worker", "--celery-app", APP, *args],
            env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
        )
        wait_for(lambda: self.proc.poll() is not None or " consuming " in self.text(), timeout=60, what="worker up")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        terminate(self.proc, timeout=30)
        print(self.text()[-5000:], file=sys.stderr)  # shown when a test fails


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def native(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app module (pointed at this dialect's database) and one native
    worker with two processes consuming its queue, for the module's tests."""
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    empty_tables(url)
    tmp = tmp_path_factory.mktemp(f"native-{request.param}")
    saved = {k: os.environ.get(k) for k in ("JOBTABLE_DATABASE_URL", "JT_RECORD")}
    os.environ["JOBTABLE_DATABASE_URL"] = url
    os.environ["JT_RECORD"] = str(tmp / "record.txt")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", JOBTABLE_WORKER_LOST_AFTER="3")
    from kombu import pools

    from tests import celery_native_app

    module = importlib.reload(celery_native_app)  # the app module reads the URL at import
    pools.reset()
    worker = NativeWorker(env, tmp / "worker.log", "--queue", module.QUEUE, "--max-processes", "2")
    module.env = env  # for tests that start a worker of their own
    module.tmp = tmp
    try:
        yield module
    finally:
        worker.stop()
        pools.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def records(kind: str, task_id: str | None = None) -> list[list[str]]:
    out = []
    for line in lines(os.environ["JT_RECORD"]):
        parts = line.split(" ", 2)
        if parts[0] == kind and (task_id is None or parts[1] == task_id):
            out.append(line.split()[1:])
    return out


def result_rows(task_id: str) -> list[Any]:
    t = tables.result
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return list(conn.execute(select(t).where(t.c.task_id == task_id).order_by(t.c.attempt)))


def request_rows(**where: Any) -> list[Any]:
    t = tables.request
    stmt = select(t).order_by(t.c.id)
    for key, value in where.items():
        stmt = stmt.where(t.c[key] == value)
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return list(conn.execute(stmt))


# -- results, request context, signals ----------------------------------------------------


def test_delay_runs_with_signals_and_one_result_row(native: Any) -> None:
    sent = native.add.delay(2, 3)
    assert sent.get(timeout=20) == 5
    assert sent.state == states.SUCCESS
    # The signals a Celery worker sends, in its order.
    wait_for(lambda: records("postrun", sent.id), what="postrun signal")
    kinds = [line.split()[0] for line in lines(os.environ["JT_RECORD"]) if sent.id in line]
    assert kinds == ["prerun", "success", "postrun"]
    assert records("postrun", sent.id) == [[sent.id, "SUCCESS"]]
    # One result row for the attempt: the backend's write and the worker's agree.
    [row] = result_rows(sent.id)
    assert (row.attempt, row.status, json.loads(row.return_value)) == (1, tables.SUCCESSFUL, 5)
    assert row.worker_id.startswith("native:")
    wait_for(lambda: not request_rows(task_id=sent.id), what="request row gone")


def test_bound_task_sees_celery_request(native: Any) -> None:
    sent = native.whoami.delay()
    info = sent.get(timeout=20)
    assert info["id"] == sent.id and info["root_id"] == sent.id and info["parent_id"] is None
    assert info["retries"] == 0 and info["routing_key"] == native.QUEUE
    assert info["hostname"].startswith("native:")
    assert info["called_directly"] is False and info["is_eager"] is False


def test_failure_sends_failure_signal_and_is_not_retried(native: Any) -> None:
    sent = native.explode.delay("no luck")
    with pytest.raises(ValueError, match="no luck"):
        sent.get(timeout=20)
    assert sent.state == states.FAILURE and "Traceback" in (sent.traceback or "")
    wait_for(lambda: records("postrun", sent.id), what="postrun signal")
    assert records("failure", sent.id) == [[sent.id, "ValueError"]]
    assert records("postrun", sent.id) == [[sent.id, "FAILURE"]]
    assert [(r.attempt, r.status) for r in result_rows(sent.id)] == [(1, tables.ERRORED)]


# -- retries -------------------------------------------------------------------------------


def test_self_retry_goes_through_the_broker_once_per_attempt(native: Any) -> None:
    sent = native.retry_twice.delay()
    assert sent.get(timeout=30) == 2
    runs = records("run", sent.id)
    assert [int(r[1]) for r in runs] == [0, 1, 2]
    # countdown=0.3: the retry row was not delivered before it was due.
    times = [float(r[2]) for r in runs]
    assert all(b - a >= 0.29 for a, b in zip(times, times[1:]))
    assert [r[1] for r in records("retry", sent.id)] == ["0", "1"]
    # One result per attempt (the worker enqueued no retry of its own).
    assert [(r.attempt, r.status, r.retried) for r in result_rows(sent.id)] == [
        (1, tables.ERRORED, True),
        (2, tables.ERRORED, True),
        (3, tables.SUCCESSFUL, False),
    ]
    # The backend wrote the result; the worker then finishes the row.
    wait_for(lambda: not request_rows(task_id=sent.id), what="request row gone")


def test_retry_past_max_retries_fails_with_the_exc(native: Any) -> None:
    sent = native.retry_forever.delay()
    with pytest.raises(KeyError, match="still broken"):
        sent.get(timeout=30)
    # Celery publishes the retry before it records this attempt RETRY: the
    # next attempt (on the other pool member) may finish first.
    wait_for(lambda: len(result_rows(sent.id)) == 2, what="both attempts recorded")
    assert [(r.attempt, r.status) for r in result_rows(sent.id)] == [(1, tables.ERRORED), (2, tables.ERRORED)]
    wait_for(lambda: records("failure", sent.id) and records("retry", sent.id), what="failure and retry signals")
    assert records("retry", sent.id) == [[sent.id, "0"]]


def test_autoretry_for_with_backoff(native: Any) -> None:
    sent = native.auto.delay()
    with pytest.raises(ConnectionError, match="flaky network"):
        sent.get(timeout=30)
    runs = records("run", sent.id)
    assert [int(r[1]) for r in runs] == [0, 1, 2]  # retry_kwargs max_retries=2
    times = [float(r[2]) for r in runs]
    # retry_backoff=1, no jitter: 1 s, then 2 s.
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 1.95
    assert [r.attempt for r in result_rows(sent.id)] == [1, 2, 3]


# -- canvas ------------------------------------------------------------------------------------


def test_link_and_link_error(native: Any) -> None:
    ok = native.add.apply_async((1, 1), link=native.note.s("linked"))
    assert ok.get(timeout=20) == 2
    wait_for(lambda: [r for r in records("note") if r[0] == "linked"], what="link callback")
    assert [r for r in records("note") if r[0] == "linked"] == [["linked", "2"]]
    bad = native.explode.apply_async(("x",), link_error=native.on_error.s())
    with pytest.raises(ValueError):
        bad.get(timeout=20)
    wait_for(lambda: records("errback", bad.id), what="errback")
    assert records("errback", bad.id) == [[bad.id, "ValueError"]]


def test_chain_group_chord(native: Any) -> None:
    assert chain(native.add.s(1, 2), native.add.s(10), native.add.s(100)).delay().get(timeout=30) == 113
    assert group(native.add.s(i, i) for i in range(4)).delay().get(timeout=30) == [0, 2, 4, 6]
    assert chord([native.add.s(i, i) for i in range(5)], native.tsum.s()).delay().get(timeout=30) == 20


def test_chains_and_groups_in_a_chord_header(native: Any) -> None:
    """Celery's own canvas messages (the last step of a header chain carries
    the chord) on the native worker: the values a Celery worker gives
    (compat_tests/test_parity.py section 7) and the shim too
    (tests/test_shim_canvas_headers.py)."""
    add, tsum = native.add, native.tsum
    header = [add.si(1, 1) | add.s(10), add.si(2, 2), add.si(3, 3) | add.s(1) | add.s(1)]
    assert chord(header, tsum.s()).delay().get(timeout=30) == 24
    assert (group(add.si(1, 1) | add.s(1), add.si(2, 2) | add.s(2)) | tsum.s()).delay().get(timeout=30) == 9
    assert (add.si(1, 1) | group(add.s(1) | add.s(10), add.s(2)) | tsum.s()).delay().get(timeout=30) == 17
    result = chord([add.si(1, 0), group(add.si(2, 0), add.si(3, 0)), add.si(4, 0)], tsum.s()).delay()
    assert result.get(timeout=30) == 10 and result.parent.get(timeout=30) == [1, 3, 2, 4]
    failing = chord([add.si(1, 1), native.explode.si("step failed") | add.s(1)], tsum.s()).delay()
    body = AsyncResult(failing.id, app=native.app)
    wait_for(lambda: body.state == states.FAILURE, what="chord body failed")
    assert "step failed" in str(body.result) and type(body.result).__name__ == "ChordError"


def test_chord_with_a_failing_part_fails_the_body(native: Any) -> None:
    result = chord([native.add.s(1, 1), native.explode.s("part failed")], native.tsum.s()).delay()
    # get() raises the part's error or the body's ChordError, whichever it sees first ...
    with pytest.raises((ValueError, ChordError), match="part failed"):
        result.get(timeout=30)
    # ... and the body itself fails with a ChordError naming the culprit; it never ran.
    body = AsyncResult(result.id, app=native.app)
    wait_for(lambda: body.state == states.FAILURE, what="chord body failed")
    assert "part failed" in str(body.result) and type(body.result).__name__ == "ChordError"
    assert not records("prerun", result.id)


# -- limits, expiry, scheduling, cancelling -----------------------------------------------------------


def test_soft_time_limit_raises_inside_the_task(native: Any) -> None:
    sent = native.soft.delay(20)
    assert sent.get(timeout=20) == "soft limit"


def test_hard_time_limit_stops_the_task(native: Any) -> None:
    sent = native.hard.delay(30)
    with pytest.raises(TimeLimitExceeded, match="TimeLimitExceeded"):
        sent.get(timeout=30)
    assert sent.state == states.FAILURE
    [row] = result_rows(sent.id)
    assert row.status == tables.ERRORED and "TimeLimitExceeded" in row.error_type


def test_rate_limit_spaces_runs_across_the_pool(native: Any) -> None:
    sent = [native.limited.delay(f"r{i}") for i in range(6)]
    for s in sent:
        s.get(timeout=30)
    times = sorted(float(at) for tag, _pid, at in records("limited") if tag.startswith("r"))
    # "4/s": one token every 0.25 s for the whole worker (every worker, in
    # fact: the database decides, db/ratelimit_sql.py), not per pool member.
    # The time is recorded a little after the token is taken, and the first
    # run of a member can be recorded later than the rest (first call), so
    # one gap may look short: the span of the runs is what the limit bounds.
    assert len(times) == 6
    assert times[-1] - times[0] >= 0.25 * (len(times) - 1) - 0.15, times
    # Each ran once, as one attempt: a row that waited for its token was not counted.
    for s in sent:
        assert [r.attempt for r in result_rows(s.id)] == [1]


def test_expired_task_is_not_run_and_is_revoked(native: Any) -> None:
    sent = native.note.apply_async((1, "expired"), expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    marker = native.note.apply_async((1, "after-expired"))
    marker.get(timeout=20)
    wait_for(lambda: result_rows(sent.id), what="expired task recorded")
    assert sent.state == states.REVOKED
    assert [r.status for r in result_rows(sent.id)] == [tables.CANCELLED]
    assert not [r for r in records("note") if r[0] == "expired"]
    assert not records("prerun", sent.id)
    # As a Celery worker that receives an expired task: task_revoked, expired=True.
    assert wait_for(lambda: records("revoked", sent.id), what="task_revoked") == [[sent.id, "True"]]
    assert str(sent.result) == "expired"


def test_countdown_and_eta_wait_in_the_table(native: Any) -> None:
    start = datetime.now(timezone.utc)
    late = native.whoami.apply_async(countdown=1.0)
    eta = native.whoami.apply_async(eta=start + timedelta(seconds=1.0))
    [row] = request_rows(task_id=late.id)
    assert row.state == tables.SCHEDULED
    late.get(timeout=20)
    eta.get(timeout=20)
    for sent in (late, eta):
        [done] = result_rows(sent.id)
        # Celery's result backend records a start only for a STARTED state
        # (task_track_started, off in this app): the end time says when it ran.
        assert done.started_at is None
        assert done.ended_at >= start + timedelta(seconds=0.95)


def test_jobtable_cancel_revokes_a_waiting_task(native: Any) -> None:
    sent = native.note.apply_async((1, "cancelled"), countdown=60)
    out = subprocess.run(
        [sys.executable, "-m", "jobtable", "cancel", sent.id],
        env=native.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert sent.state == states.REVOKED
    assert not request_rows(task_id=sent.id)


def test_control_revoke_skips_a_waiting_task(native: Any) -> None:
    # The worker answers the app's control broadcasts as one node.
    wait_for(lambda: len(native.app.control.ping(timeout=0.5)) >= 1, what="control listener")
    sent = native.note.apply_async((1, "revoked"), countdown=3)
    replies = native.app.control.revoke(sent.id, reply=True, timeout=10, limit=1)
    assert len(replies) == 1, replies
    with pytest.raises(TaskRevokedError):
        sent.get(timeout=30)
    assert sent.state == states.REVOKED
    wait_for(lambda: records("revoked", sent.id), what="task_revoked signal")
    assert not [r for r in records("note") if r[0] == "revoked"]
    assert not records("prerun", sent.id)
    assert [r.status for r in result_rows(sent.id)] == [tables.CANCELLED]


def test_a_revoke_it_never_heard_holds(native: Any) -> None:
    """Recorded in the database only (as when no worker ran at the revoke):
    the native worker still ends the task as a Celery worker would (REVOKED,
    task_revoked sent, never run), and inspect revoked lists the id."""
    from jobtable.db import clock, revokes_sql
    from jobtable.db import engine as db_engine

    task_id = f"unheard-{os.getpid()}-{native.tmp.name}"
    with db_engine.get_engine().begin() as conn:
        revokes_sql.add(conn, [(revokes_sql.TASK, "", task_id)], clock.utcnow())
    sent = native.note.apply_async((1, "unheard"), task_id=task_id)
    with pytest.raises(TaskRevokedError):
        sent.get(timeout=30)
    wait_for(lambda: records("revoked", sent.id), what="task_revoked signal")
    assert not [r for r in records("note") if r[0] == "unheard"]
    assert [r.status for r in result_rows(sent.id)] == [tables.CANCELLED]
    replies = native.app.control.inspect(timeout=5).revoked() or {}
    assert replies and all(task_id in ids for ids in replies.values()), replies


# -- concurrency key ---------------------------------------------------------------------------


def test_concurrency_key_header_one_pending_or_running(native: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    key = f"k-{os.getpid()}-{native.tmp.name}"
    first = native.keyed.apply_async((str(release),), headers={"concurrency_key": key})
    wait_for(lambda: [r for r in request_rows(task_id=first.id) if r.state == tables.RUNNING], what="keyed running")
    [row] = request_rows(concurrency_key=key)
    assert row.task_id == first.id
    # A second one with the same key while the first runs: not enqueued.
    second = native.keyed.apply_async((str(release),), headers={"concurrency_key": key})
    assert [r.task_id for r in request_rows(concurrency_key=key)] == [first.id]
    release.touch()
    assert first.get(timeout=20) == first.id
    assert second.state == states.PENDING and not result_rows(second.id)
    # Once the first has finished the key is free again.
    wait_for(lambda: not request_rows(concurrency_key=key), what="key released")
    third = native.keyed.apply_async((str(release),), headers={"concurrency_key": key})
    assert third.get(timeout=20) == third.id
    # The result row is Celery's result backend's (jobtable's): it reads the
    # key from the message's headers, as the native worker's rows have it
    # (issue 15: a Job's rows are the same whichever worker writes them).
    assert [r.concurrency_key for r in result_rows(third.id)] == [key]


def test_concurrency_key_task_option(native: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    user = f"u{native.tmp.name}"
    first = native.keyed_option.delay(user, str(release))
    other = native.keyed_option.delay(f"{user}-other", str(release))
    duplicate = native.keyed_option.delay(user, str(release))
    keys = sorted(r.concurrency_key for r in request_rows(task_name="tests.celery_native_app.keyed_option"))
    assert keys == [f"user-{user}", f"user-{user}-other"]
    assert not request_rows(task_id=duplicate.id)
    release.touch()
    assert first.get(timeout=20) == first.id and other.get(timeout=20) == other.id


# -- threads pool, another queue --------------------------------------------------------------


def test_threads_pool_runs_celery_tasks_with_soft_limit(native: Any) -> None:
    queue = "celery_native_threads"
    worker = NativeWorker(native.env, native.tmp / "threads.log", "--queue", queue, "--pool", "threads",
                          "--max-processes", "2")
    try:
        ok = native.add.apply_async((20, 22), queue=queue)
        soft = native.soft.apply_async((20,), queue=queue)
        assert ok.get(timeout=20) == 42
        assert soft.get(timeout=20) == "soft limit"
        info = native.whoami.apply_async(queue=queue).get(timeout=20)
        assert info["routing_key"] == queue
    finally:
        worker.stop()


def test_pickle_serializer_is_refused(native: Any, tmp_path: Path) -> None:
    (tmp_path / "pickled_app.py").write_text(
        "from celery import Celery\n"
        "app = Celery('p', broker='memory://')\n"
        "app.conf.task_serializer = 'pickle'\n"
    )
    env = dict(native.env, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    out = subprocess.run(
        [sys.executable, "-m", "jobtable", "worker", "--celery-app", "pickled_app:app", "--burst"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "pickle is refused" in out.stdout + out.stderr and "task_serializer = 'json'" in out.stdout + out.stderr


def test_retry_of_a_keyed_task_keeps_the_key(native: Any) -> None:
    # self.retry() would publish the next attempt while this one holds the
    # key (and the table would drop it): the worker enqueues it instead.
    key = f"kr-{native.tmp.name}"
    sent = native.keyed_retry.apply_async(headers={"concurrency_key": key})
    assert sent.get(timeout=30) == 1
    assert [int(r[1]) for r in records("run", sent.id)] == [0, 1]
    assert [r[1] for r in records("retry", sent.id)] == ["0"]
    assert [(r.attempt, r.status, r.retried) for r in result_rows(sent.id)] == [
        (1, tables.ERRORED, True),
        (2, tables.SUCCESSFUL, False),
    ]
    wait_for(lambda: not request_rows(concurrency_key=key), what="key released")


def test_priority_order_and_app_from_settings(native: Any) -> None:
    queue = "celery_native_prio"
    for priority, tag in [(0, "p0"), (9, "p9"), (3, "p3"), (9, "p9b")]:
        native.note.apply_async((priority, tag), queue=queue, priority=priority)
    # JOBTABLE_CELERY_APP instead of --celery-app; --burst stops once the queue is empty.
    env = dict(native.env, JOBTABLE_CELERY_APP=APP)
    out = subprocess.run(
        [sys.executable, "-m", "jobtable", "worker", "--queue", queue, "--burst", "--max-processes", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r[0] for r in records("note") if r[0].startswith("p")] == ["p9", "p9b", "p3", "p0"]


# -- the worker's life: Celery's worker signals, the app found as celery -A finds it ----------


def test_worker_signals_are_celerys(native: Any, tmp_path: Path) -> None:
    """celeryd_init and worker_init in the supervisor before it forks,
    worker_process_init in each member, worker_ready, then on a stop
    worker_process_shutdown in each member and worker_shutdown: what
    Celery's Django fix-up (and a project's own set-up) hangs on."""
    log = tmp_path / "life.txt"
    env = dict(native.env, JT_RECORD=str(log))
    worker = NativeWorker(env, tmp_path / "life.log", "--queue", "celery_native_life", "--max-processes", "2")
    supervisor = str(worker.proc.pid)
    wait_for(lambda: any(line.startswith("worker_ready ") for line in lines(log)), what="worker_ready")
    worker.stop()
    seen = [line.split() for line in lines(log)]
    kinds = [parts[0] for parts in seen]
    node = next(parts[2] for parts in seen if parts[0] == "worker_init")
    assert node.startswith(f"jobtable.{supervisor}@"), seen
    assert kinds.index("celeryd_init") < kinds.index("worker_init") < kinds.index("worker_process_init"), kinds
    by_kind: dict[str, list[list[str]]] = {}
    for parts in seen:
        by_kind.setdefault(parts[0], []).append(parts[1:])
    assert by_kind["celeryd_init"] == [[supervisor, node, node, "celery_native"]]
    assert by_kind["worker_init"] == [[supervisor, node, "jt_native", "celery.concurrency.prefork:TaskPool"]]
    assert by_kind["worker_ready"] == [[supervisor, node, "jt_native", "celery.concurrency.prefork:TaskPool"]]
    assert by_kind["worker_shutdown"] == [[supervisor, node, "jt_native", "celery.concurrency.prefork:TaskPool"]]
    members = sorted(parts[0] for parts in by_kind["worker_process_init"])
    assert len(members) == 2 and supervisor not in members, seen
    assert all(parts[1] == node for parts in by_kind["worker_process_init"])
    # Each member says its own pid, as Celery's pool processes do.
    assert sorted(parts[0] for parts in by_kind["worker_process_shutdown"]) == members
    assert all(parts[0] == parts[1] and parts[2] == "0" for parts in by_kind["worker_process_shutdown"])
    assert kinds[-1] == "worker_shutdown", kinds


def test_celery_app_is_found_as_celery_a_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobtable.exceptions import ConfigurationError
    from jobtable.shim.celery_runner import load_app

    # Django's layout: the package imports its celery module; `-A pkg` finds pkg.celery:app.
    package = tmp_path / "lifepkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .celery import app as celery_app\n")
    (package / "celery.py").write_text("from celery import Celery\napp = Celery('lifepkg', set_as_current=False)\n")
    (tmp_path / "lifemod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = load_app("lifepkg")
    assert app.main == "lifepkg"
    assert load_app("lifepkg.celery:app") is app and load_app("lifepkg.celery") is app
    for spec, words in [
        ("no_such_module_xyz", ["no_such_module_xyz", "Cannot import"]),
        ("lifemod", ["lifemod", "names no Celery app", "module:attribute"]),
        ("lifemod:VALUE", ["lifemod:VALUE", "int", "not a Celery app"]),
        ("", ["--celery-app ''"]),
        ("life\x00pkg", ["--celery-app 'life\\x00pkg'"]),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            load_app(spec)
        assert all(word in str(caught.value) for word in words), (spec, str(caught.value))


def test_reject_on_worker_lost_requeues_once(native: Any, tmp_path: Path) -> None:
    """Celery's acks_late + reject_on_worker_lost: a task whose pool process
    died is requeued once; one that dies again ends LOST (WorkerLost)."""
    once = native.die_once.delay(str(tmp_path / "once"))
    always = native.die_always.delay(str(tmp_path / "always"))
    assert once.get(timeout=30) == "survived"
    wait_for(lambda: len(result_rows(always.id)) == 2, timeout=30, what="lost twice")
    assert [(r.attempt, r.status, r.retried) for r in result_rows(once.id)][0] == (1, tables.LOST, True)
    assert result_rows(once.id)[-1].status == tables.SUCCESSFUL
    assert [(r.attempt, r.status, r.retried, r.error_type) for r in result_rows(always.id)] == [
        (1, tables.LOST, True, "WorkerLost"),
        (2, tables.LOST, False, "WorkerLost"),
    ]
    assert len([r for r in records("died") if r[0] == str(tmp_path / "always")]) == 2
    assert always.state == states.FAILURE
