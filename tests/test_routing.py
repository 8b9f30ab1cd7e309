"""Hot queues routed to RabbitMQ (issue 18, part 2): publish,
the native worker consuming through Kombu, results in jobtable_result,
retries and deferrals through the table's scheduled rows, concurrency keys
held in the table, dead letters, kill -9 redelivery, and a Celery worker
running the same Jobs.  Real RabbitMQ (127.0.0.1:5672), one queue per test,
deleted afterwards; the broker restart runs on a private rabbitmq-server
node of its own (the shared one is never restarted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

import jobtable
from jobtable import badrows, messages
from jobtable.db import clock, routed_sql, tables
from jobtable.routing import member, publish

from tests.conftest import ROOT
from tests.routing_support import (
    AMQP_URL,
    PrivateRabbit,
    delete_queues,
    depth,
    new_queue,
    raw_producer,
    routes_env,
)
from tests.worker_jobs import (
    Add,
    Boom,
    DeferOnce,
    Gate,
    KeyedLog,
    Log,
    lines,
    requests,
    results,
    start_worker,
    stop,
    wait_for,
    worker_env,
)



# -- deliveries -> rows (what a hostile publisher can send) --------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_header_value = _json | st.binary(max_size=10) | st.datetimes()


@hsettings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=200) | st.sampled_from([b'[[1], {}, {}]', b'[[], {"a": 1}]', b"[]", b'"x"']),
    headers=st.dictionaries(st.sampled_from(["id", "task", "eta", "expires", "retries", "jobtable_retries",
                                             "concurrency_key", "x"]) | st.text(max_size=8), _header_value, max_size=6),
    content_type=st.sampled_from(["application/json", "application/x-python-serialize", "", "text/plain"]),
    content_encoding=st.sampled_from(["utf-8", "binary", "latin-1", "nope"]),
    priority=st.none() | st.integers(-1000, 1000),
    correlation_id=st.none() | st.text(max_size=10) | st.integers(),
)
def test_any_delivery_becomes_a_runnable_row_or_a_dead_letter(
    body: bytes, headers: dict[str, object], content_type: str, content_encoding: str, priority: int | None,
    correlation_id: object,
) -> None:
    from types import SimpleNamespace

    message = SimpleNamespace(
        body=body, headers=headers, content_type=content_type, content_encoding=content_encoding,
        properties={"priority": priority, "correlation_id": correlation_id},
        delivery_info={"routing_key": "q", "redelivered": False},
    )
    row, bad = member.row_of(message, ["q"], "native:test", -1, clock.utcnow())
    assert row.queue == "q" and row.id == -1
    for text in (row.task_id, row.task_name, row.message):
        assert "\x00" not in text
        text.encode("utf-8")  # storable
    assert len(row.task_id) <= 255
    if bad is None:
        json.loads(row.message)
        call = badrows.decode_call(row.message)  # the Executor's verdict: a call or a dead letter
        assert isinstance(call, (badrows.BadRow, messages.TaskCall))


# -- publish and consume -----------------------------------------------------------


@pytest.fixture
def queue(db_url: str) -> Iterator[str]:
    name = new_queue()
    jobtable.configure(broker_routes={name: AMQP_URL})
    yield name
    delete_queues(name)


def test_routed_queue_end_to_end(queue: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """One worker process, many behaviours: publish, results, retries,
    deferral, delay, keys and dead letters on a routed queue."""
    log = str(tmp_path / "log")
    added = Add(2, 3).run_in_worker(queue=queue)
    many = jobtable.run_in_worker_many([Log(log, f"bulk{i}") for i in range(30)], queue=queue)
    failing = Boom().run_in_worker(queue=queue, retries=1)
    deferred = DeferOnce(str(tmp_path / "marker"), delay=0.3).run_in_worker(queue=queue)
    delayed = Log(log, "delayed").run_in_worker(queue=queue, delay=0.5)
    keyed = KeyedLog(log, "k1").run_in_worker(queue=queue)
    assert added and failing and deferred and delayed and keyed and all(many)
    # Published at once, not stored: only what waits (the delay) or is
    # counted (the key) is in the table.
    assert depth(queue) == 1 + 30 + 1 + 1
    stored = {row.task_id: row for row in requests()}
    assert set(stored) == {delayed.uuid, keyed.uuid}
    assert stored[delayed.uuid].state == tables.SCHEDULED
    # The key holds: a second job with the same key is refused.
    assert KeyedLog(log, "k1").run_in_worker(queue=queue) is None

    with raw_producer() as producer:  # a message no worker can decode
        producer.publish(b"{not json", routing_key=queue, content_type="application/json",
                         content_encoding="utf-8", headers={"id": "bad-1", "task": "tests.worker_jobs.Add"})

    env = worker_env(routes_env(subprocess_env, queue))
    proc = start_worker(env, "-q", queue, "--max-processes", "1")
    try:
        wait_for(lambda: len(results(added.uuid)) == 1, what="the routed job's result")
        wait_for(lambda: len(results(failing.uuid)) == 2, what="the failure and its retry")
        wait_for(lambda: [r.status for r in results(deferred.uuid)] == [tables.DEFERRED, tables.SUCCESSFUL],
                 what="the deferral and its next attempt")
        wait_for(lambda: results(delayed.uuid), what="the delayed job")
        wait_for(lambda: results(keyed.uuid), what="the keyed job")
        wait_for(lambda: results("bad-1"), what="the dead letter")
        wait_for(lambda: len(results()) == 1 + 30 + 2 + 2 + 1 + 1 + 1, what="every result")
        # The key row is gone with its job: the key is free again.
        wait_for(lambda: requests() == [], what="the key row to go")
        again = KeyedLog(log, "k1").run_in_worker(queue=queue)
        assert again is not None
        wait_for(lambda: results(again.uuid), what="the keyed job again")
    finally:
        out = stop(proc)
    (result,) = results(added.uuid)
    assert result.status == tables.SUCCESSFUL and json.loads(result.return_value) == {"sum": 5}
    assert result.queue == queue and result.worker_id.startswith("native:")
    first, second = results(failing.uuid)
    assert (first.status, first.retried, second.status, second.attempt) == (tables.ERRORED, True, tables.ERRORED, 2)
    (delayed_result,) = results(delayed.uuid)
    assert delayed_result.started_at >= delayed.start_at  # not before it was due
    (bad,) = results("bad-1")
    assert bad.status == tables.DEAD_LETTER and "not JSON" in bad.error_message
    assert "{not json" in bad.message  # the raw message is kept
    assert sorted(lines(log)) == sorted([f"bulk{i}" for i in range(30)] + ["delayed", "k1", "k1"])
    assert depth(queue) == 0
    assert "Traceback" not in out.replace("ValueError: boom", ""), out


def test_kill_9_mid_job_is_redelivered_and_recorded_once(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log, release = str(tmp_path / "log"), tmp_path / "release"
    job = Gate(log, str(release)).run_in_worker(queue=queue)
    assert job is not None
    env = worker_env(routes_env(subprocess_env, queue))
    first = start_worker(env, "-q", queue, "--max-processes", "1")
    try:
        wait_for(lambda: lines(log) == ["started"], what="the job to start")
        os.kill(first.pid, signal.SIGKILL)  # members die with their supervisor (PR_SET_PDEATHSIG)
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert results(job.uuid) == []
    release.write_text("go")
    second = start_worker(env, "-q", queue, "--max-processes", "1")
    try:
        wait_for(lambda: results(job.uuid), what="the redelivered job's result")
        wait_for(lambda: depth(queue) == 0, what="the queue to drain")
    finally:
        stop(second)
    (only,) = results(job.uuid)
    assert only.status == tables.SUCCESSFUL and only.attempt == 1
    assert lines(log) == ["started", "started"]  # ran again after the kill, recorded once


@pytest.mark.dialects("postgresql")
def test_a_celery_worker_runs_the_same_jobs_from_the_routed_queue(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    added = Add(20, 22).run_in_worker(queue=queue)
    logged = Log(log, "from-celery").run_in_worker(queue=queue)
    assert added and logged
    record = tmp_path / "record"
    env = dict(routes_env(subprocess_env, queue), JT_ROUTED_QUEUE=queue, JT_RECORD=str(record))
    out_path = tmp_path / "celery.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.routed_celery_app", "worker", "-P", "solo", "-Q", queue,
         "-l", "info", "-n", f"routed{os.getpid()}@%h"],
        env=env, cwd=ROOT, stdout=out_path.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: results(added.uuid) and results(logged.uuid), timeout=60, what="the Celery worker's results")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(out_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    (result,) = results(added.uuid)
    assert result.status == tables.SUCCESSFUL and json.loads(result.return_value) == {"sum": 42}
    assert lines(log) == ["from-celery"]


def test_unrouted_queues_are_untouched(queue: str) -> None:
    job = Add(1, 1).run_in_worker(queue="default")
    assert job is not None and [row.task_id for row in requests()] == [job.uuid]
    assert routed_sql.HOLDER not in {row.worker_id for row in requests()}


@pytest.mark.dialects("postgresql")  # a broker's restart is the same on every database: run it once
def test_broker_restart_worker_and_publisher_reconnect_by_themselves(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    rabbit = PrivateRabbit(tmp_path / "rabbit")
    rabbit.start()
    proc = None
    try:
        queue = new_queue()
        jobtable.configure(broker_routes={queue: rabbit.url}, connect_timeout=2)
        before = [Add(i, 1).run_in_worker(queue=queue) for i in range(5)]
        env = worker_env(routes_env(subprocess_env, queue, url=rabbit.url))
        proc = start_worker(env, "-q", queue, "--max-processes", "1")
        wait_for(lambda: all(results(job.uuid) for job in before if job), what="the jobs before the restart")
        rabbit.stop()
        # Broker down: the enqueue fails loudly (nothing is queued silently).
        with pytest.raises(publish.PublishError):
            Add(0, 0).run_in_worker(queue=queue)
        rabbit.start()
        # The publisher and the worker reconnect by themselves.
        after = [Add(i, 2).run_in_worker(queue=queue) for i in range(5)]
        wait_for(lambda: all(results(job.uuid) for job in after if job), timeout=60, what="the jobs after the restart")
    finally:
        out = stop(proc) if proc is not None else ""
        rabbit.stop(kill=True)
    assert all(len(results(job.uuid)) == 1 for job in before + after if job)
    assert [json.loads(results(job.uuid)[0].return_value)["sum"] for job in after if job] == [2, 3, 4, 5, 6]
    assert "broker connection" in out and "lost" in out, out


@pytest.mark.dialects("sqlite")  # the reads are dialect-free; the depth is the broker's
def test_stats_and_dashboard_show_routed_queues_with_the_brokers_depth(db_url: str) -> None:
    from click.testing import CliRunner

    from jobtable.cli import main
    from tests.dashboard_client import client

    queue, other = new_queue(), new_queue()
    secret_url = AMQP_URL  # guest:guest: the password must not be shown either
    jobtable.configure(broker_routes={queue: secret_url, other: secret_url})
    try:
        jobtable.run_in_worker_many([Add(i, i) for i in range(3)], queue=queue)
        assert KeyedLog("/dev/null", "held").run_in_worker(queue=queue) is not None  # a key row, in the table
        out = CliRunner().invoke(main, ["stats"], catch_exceptions=False).output
        assert "Routed to a broker" in out and ":guest@" not in out
        table, routed = out.split("Routed to a broker")
        assert any(text.split()[:2] == [queue, "1"] for text in table.splitlines())  # the key row, pending
        out = routed
        (line,) = [text for text in out.splitlines() if text.startswith(queue)]
        # Depth 3; the key row is not held yet (no relay ran: it is pending, above).
        assert line.split()[1:] == ["amqp://guest:***@127.0.0.1:5672//", "3", "0"]
        (unused,) = [text for text in out.splitlines() if text.startswith(other)]
        assert unused.split()[2] == "?"  # not declared yet: the broker cannot say
        page = client().get("/").text
        assert 'id="routed-queues"' in page and queue in page and ":guest@" not in page
    finally:
        delete_queues(queue, other)


@pytest.mark.dialects("sqlite")
def test_a_queue_deleted_under_a_publisher_is_declared_again_not_dropped(queue: str) -> None:
    assert Add(1, 1).run_in_worker(queue=queue) is not None
    delete_queues(queue)  # by hand, after this process declared it
    assert Add(2, 2).run_in_worker(queue=queue) is not None
    assert depth(queue) == 1  # returned by the broker (mandatory), declared again, published again
