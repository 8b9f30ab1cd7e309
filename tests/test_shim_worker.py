"""Shim tasks sent with .delay()/.apply_async() and run by the native worker;
states and values read back with AsyncResult (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobtable import messages
from jobtable.db import engine as db_engine
from jobtable.db import clock, enqueue_sql, tables
from jobtable.shim import AsyncResult, MaxRetriesExceededError, TaskRevokedError, states
from tests import shim_tasks as t
from tests.conftest import ALL_DIALECTS
from tests.polling import wait_for
from tests.shim_support import run_burst, start_worker
from tests.worker_jobs import lines, requests, results, stop

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def test_delay_runs_and_asyncresult_reads_it(db_url: str, subprocess_env: dict[str, str]) -> None:
    sent = t.add.delay(2, 3)
    assert sent is not None
    assert sent.state == states.PENDING and not sent.ready()
    [row] = requests()
    assert (row.task_name, row.queue, row.state) == ("tests.shim_tasks.add", "celery", tables.PENDING)
    message = json.loads(row.message)
    # Celery's protocol v2: the same headers and body a Celery client writes.
    assert message["headers"]["task"] == "tests.shim_tasks.add" and message["headers"]["id"] == sent.id
    assert message["headers"]["retries"] == 0 and message["headers"]["root_id"] == sent.id
    assert json.loads(message["body"])[:2] == [[2, 3], {}]
    run_burst(subprocess_env)
    result = AsyncResult(sent.id)
    assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS and result.ready() and result.successful() and not result.failed()
    assert result.result == 5 and result.name == "tests.shim_tasks.add"
    [done] = results(sent.id)
    assert done.status == tables.SUCCESSFUL and done.worker_id.startswith("native:")


def test_request_context_custom_name_and_task_queue(db_url: str, subprocess_env: dict[str, str]) -> None:
    sent = t.whoami.apply_async(("x",), task_id="my-own-id")
    assert sent is not None and sent.id == "my-own-id"
    assert [(r.task_name, r.queue) for r in requests()] == [("shim.whoami", "other")]
    run_burst(subprocess_env)
    assert sent.get(timeout=10) == {
        "id": "my-own-id",
        "task": "shim.whoami",
        "retries": 0,
        "args": ["x"],
        "kwargs": {},
        "root_id": "my-own-id",
        "queue": "other",
        "tag": "x",
    }


def test_failure_is_failure_with_the_exception(db_url: str, subprocess_env: dict[str, str]) -> None:
    sent = t.boom.delay("no luck")
    assert sent is not None
    run_burst(subprocess_env)
    with pytest.raises(ValueError, match="no luck"):
        sent.get(timeout=10)
    assert sent.state == states.FAILURE and sent.failed() and sent.ready()
    assert isinstance(sent.result, ValueError) and "Traceback" in (sent.traceback or "")
    assert isinstance(sent.get(timeout=1, propagate=False), ValueError)
    # A plain failure is not retried (Celery retries only on retry()/autoretry_for).
    assert [r.attempt for r in results(sent.id)] == [1]


def test_retry_keeps_the_id_and_counts_attempts(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "flaky.log")
    sent = t.flaky.delay(log, 2)
    assert sent is not None
    proc = start_worker(subprocess_env, "--max-processes", "1")
    try:
        assert sent.get(timeout=20) == 2
    finally:
        stop(proc)
    runs = [line.split() for line in lines(log)]
    assert [(task_id, int(retries)) for task_id, retries, _ in runs] == [(sent.id, 0), (sent.id, 1), (sent.id, 2)]
    times = [float(at) for _, _, at in runs]
    assert all(b - a >= 0.2 for a, b in zip(times, times[1:])), times  # default_retry_delay
    attempts = results(sent.id)
    assert [(r.attempt, r.status, r.retried) for r in attempts] == [
        (1, tables.DEFERRED, True),
        (2, tables.DEFERRED, True),
        (3, tables.SUCCESSFUL, False),
    ]
    assert "flaky 0" in attempts[0].error_message


def test_retry_past_max_retries_raises_the_original(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "flaky.log")
    sent = t.flaky.delay(log, 99)
    other = t.retry_without_exc.delay(str(tmp_path / "plain.log"))
    assert sent is not None and other is not None
    proc = start_worker(subprocess_env, "--max-processes", "1")
    try:
        with pytest.raises(ValueError, match="flaky 2"):
            sent.get(timeout=20)
        with pytest.raises(MaxRetriesExceededError) as raised:
            other.get(timeout=20)
    finally:
        stop(proc)
    assert len(lines(log)) == 3  # max_retries=2: the first run and two retries
    assert type(raised.value) is MaxRetriesExceededError, repr(raised.value)
    assert lines(tmp_path / "plain.log") == ["0", "1"]  # retry(max_retries=1)
    assert [r.status for r in results(sent.id)] == [tables.DEFERRED, tables.DEFERRED, tables.ERRORED]


def test_autoretry_for_with_backoff(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "auto.log")
    sent = t.auto.delay(log)
    quick = t.auto_kwargs.delay(str(tmp_path / "kw.log"))
    assert sent is not None and quick is not None
    proc = start_worker(subprocess_env, "--max-processes", "1")
    try:
        with pytest.raises(KeyError):
            sent.get(timeout=30)
        with pytest.raises(KeyError):
            quick.get(timeout=30)
    finally:
        stop(proc)
    times = [float(x) for x in lines(log)]
    assert len(times) == 3  # max_retries=2
    # retry_backoff=1, no jitter, capped at retry_backoff_max=1: one second apart.
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:])), times
    assert lines(tmp_path / "kw.log") == ["x", "x"]  # retry_kwargs max_retries=1


def test_countdown_eta_expires_priority_queue(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    later = t.add.apply_async((1, 1), countdown=3600)
    at = t.add.apply_async((1, 2), eta=now + timedelta(hours=2))
    expired = t.add.apply_async((1, 3), expires=now - timedelta(seconds=1))
    assert later and at and expired
    rows = {r.task_id: r for r in requests()}
    assert rows[later.id].state == tables.SCHEDULED
    assert abs((rows[later.id].run_at - now).total_seconds() - 3600) < 60
    assert rows[at.id].run_at == now + timedelta(hours=2)
    assert json.loads(rows[at.id].message)["headers"]["eta"] == (now + timedelta(hours=2)).isoformat()
    log = str(tmp_path / "order.log")
    for tag, priority in [("low", 0), ("high", 9), ("mid", 5)]:
        t.record.apply_async((log, tag), priority=priority)
    t.record.apply_async((log, "elsewhere"), queue="elsewhere")
    run_burst(subprocess_env)
    assert lines(log) == ["high", "mid", "low"]  # higher priority first, as on RabbitMQ
    assert [r.queue for r in requests() if r.state == tables.PENDING] == ["elsewhere"]
    assert expired.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=5)
    assert later.state == states.PENDING and at.state == states.PENDING


def test_time_limit_stops_the_task(db_url: str, subprocess_env: dict[str, str]) -> None:
    sent = t.sleepy.delay()
    assert sent is not None
    run_burst(subprocess_env)
    from jobtable.shim import TimeLimitExceeded

    with pytest.raises(TimeLimitExceeded, match="timeout of 1 seconds"):
        sent.get(timeout=10)


def test_link_callback(db_url: str, subprocess_env: dict[str, str]) -> None:
    callback = t.echo.s()
    sent = t.add.apply_async((20, 22), link=callback)
    assert sent is not None
    run_burst(subprocess_env)
    assert sent.get(timeout=10) == 42
    [echoed] = [r for r in results() if r.task_name == "tests.shim_tasks.echo"]
    assert json.loads(echoed.return_value) == 42
    assert json.loads(echoed.message)["headers"]["parent_id"] == sent.id


def test_rows_written_by_a_celery_client_run_too(db_url: str, subprocess_env: dict[str, str]) -> None:
    """A message as Celery (through the transport) or the Job API stores it:
    only the task name ties it to the shim's task."""
    task_id = messages.new_task_id()
    envelope = messages.task_message(
        task_name="tests.shim_tasks.add", task_id=task_id, args=[40, 2], kwargs={}, queue="celery", priority=0, eta=None
    )
    # Celery's canvas travels in the body's embed: chain(add.s(40, 2), echo.s()).
    next_id = messages.new_task_id()
    step = {
        "task": "tests.shim_tasks.echo",
        "args": [],
        "kwargs": {},
        "options": {"task_id": next_id},
        "subtask_type": None,
        "immutable": False,
        "chord_size": None,
    }
    args, kwargs, _embed = json.loads(envelope["body"])
    envelope["body"] = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": [step], "chord": None}])
    with db_engine.connect() as conn, conn.begin():
        enqueue_sql.insert_requests(conn, [messages.row_values(envelope, "celery", clock.utcnow())])
    run_burst(subprocess_env)
    assert AsyncResult(task_id).get(timeout=10) == 42
    assert AsyncResult(next_id).get(timeout=10) == 42


def test_revoke_waiting_and_forget(db_url: str, subprocess_env: dict[str, str]) -> None:
    waiting = t.add.apply_async((1, 1), countdown=600)
    done = t.add.delay(2, 2)
    assert waiting and done
    waiting.revoke()
    # As under Celery: left for the worker that claims it at its countdown
    # (it discards it then: REVOKED, task_revoked); PENDING meanwhile.
    assert waiting.state == states.PENDING and {r.task_id for r in requests()} == {waiting.id, done.id}
    run_burst(subprocess_env)
    assert done.get(timeout=10) == 4
    assert [r.task_id for r in requests()] == [waiting.id]
    done.forget()
    assert done.state == states.PENDING and results(done.id) == []


def test_get_times_out(db_url: str) -> None:
    from jobtable.shim import TimeoutError

    sent = t.add.delay(1, 1)
    assert sent is not None
    with pytest.raises(TimeoutError):
        sent.get(timeout=0.2)


def test_concurrency_key_in_headers(db_url: str) -> None:
    first = t.add.apply_async((1, 1), headers={"concurrency_key": "k"})
    second = t.add.apply_async((1, 2), headers={"concurrency_key": "k"})
    assert first is not None and second is None
    assert [r.concurrency_key for r in requests()] == ["k"]


def test_reject_on_worker_lost_requeues_once(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """Celery's acks_late + reject_on_worker_lost: a task whose worker
    process died is run again once; dying again (or without the option) it
    fails, recorded LOST (WorkerLost), as Celery's WorkerLostError."""
    once = t.die_once.delay(str(tmp_path / "once.log"))
    assert once is not None
    proc = start_worker(subprocess_env, "--max-processes", "1")
    try:
        assert once.get(timeout=30) == "survived"
        # Sent after: a death loses the unwritten results of its member's batch.
        always = t.die_always.delay(str(tmp_path / "always.log"))
        plain = t.die_plain.delay(str(tmp_path / "plain.log"))
        assert always is not None and plain is not None
        wait_for(lambda: len(results(always.id)) == 2 and results(plain.id), timeout=30, what="lost twice")
    finally:
        stop(proc)

    def ended(task_id: str) -> list[tuple[int, str, bool, str | None]]:
        return [(r.attempt, r.status, r.retried, r.error_type) for r in results(task_id)]

    assert ended(once.id) == [(1, tables.LOST, True, "WorkerLost"), (2, tables.SUCCESSFUL, False, None)]
    assert "requeued once (reject_on_worker_lost)" in results(once.id)[0].error_message
    assert ended(always.id) == [(1, tables.LOST, True, "WorkerLost"), (2, tables.LOST, False, "WorkerLost")]
    assert ended(plain.id) == [(1, tables.LOST, False, "WorkerLost")]
    assert len(lines(tmp_path / "always.log")) == 2 and len(lines(tmp_path / "plain.log")) == 1
    assert always.state == states.FAILURE and plain.state == states.FAILURE
