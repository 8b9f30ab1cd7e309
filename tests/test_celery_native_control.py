"""Celery's remote control of ``jobtable worker --celery-app``: one node per
worker with Celery's reply shapes, errors naming what cannot be done, and
no pidbox binding left behind by a worker that stopped or was killed."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobtable.db import tables
from jobtable.db.engine import get_engine
from tests.conftest import ROOT, empty_tables
from tests.polling import wait_for
from tests.test_celery_native_worker import NativeWorker

QUEUE = "celery_native"


@pytest.fixture(params=["sqlite", "postgresql"])
def app_module(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    empty_tables(url)
    saved = {k: os.environ.get(k) for k in ("JOBTABLE_DATABASE_URL", "JT_RECORD")}
    os.environ["JOBTABLE_DATABASE_URL"] = url
    os.environ["JT_RECORD"] = str(tmp_path / "record.txt")
    from kombu import pools

    from tests import celery_native_app

    module = importlib.reload(celery_native_app)
    pools.reset()
    module.env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", JOBTABLE_WORKER_LOST_AFTER="3")
    module.tmp = tmp_path
    try:
        yield module
    finally:
        pools.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def node_of(worker: NativeWorker) -> str:
    return f"jobtable.{worker.proc.pid}@{os.uname().nodename}"


def pidbox_bindings(node: str) -> list[Any]:
    t = tables.binding
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return list(conn.execute(select(t.c.queue).where(t.c.queue.startswith(node + "."))))


def queue_rows(queue_prefix: str) -> list[Any]:
    t = tables.request
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return list(conn.execute(select(t.c.id).where(t.c.queue.startswith(queue_prefix))))


def test_one_node_per_worker_with_celerys_reply_shapes(app_module: Any, tmp_path: Path) -> None:
    worker = NativeWorker(app_module.env, tmp_path / "w.log", "--queue", QUEUE, "--max-processes", "2")
    try:
        node = node_of(worker)
        control = app_module.app.control
        wait_for(lambda: node in {k for r in control.ping(timeout=0.5) for k in r}, what="node answers ping")
        replies = [r for r in control.ping(timeout=1.0) if node in r]
        assert replies == [{node: {"ok": "pong"}}]  # one node for a pool of two
        # Each call waits its whole timeout: with limit=1 (and destination=[node])
        # a call returns on the first message it drains, and on SQLite some
        # call answers None now and then (a reply not this call's; not a
        # timed-out call: it happens with timeout=15 too) -- not understood yet.
        mine: dict[str, Any] = {"timeout": 3}
        inspect = control.inspect(**mine)

        release = tmp_path / "release"
        running = app_module.keyed.apply_async((str(release),))
        seen: list[Any] = []
        wait_for(lambda: seen.append((inspect.active() or {}).get(node)) or seen[-1], what="task active")
        [active] = seen[-1]
        assert active["id"] == running.id and active["name"] == app_module.keyed.name
        assert active["args"] == [str(release)] and active["delivery_info"]["routing_key"] == QUEUE
        assert set(active) == {"id", "name", "args", "kwargs", "type", "hostname", "time_start", "acknowledged",
                               "delivery_info", "worker_pid"}
        assert inspect.query_task(running.id)[node][running.id][0] == "active"
        assert inspect.reserved()[node] == [] and inspect.scheduled()[node] == []

        registered = inspect.registered()[node]
        assert app_module.add.name in registered and not any(n.startswith("celery.") for n in registered)
        stats = inspect.stats()[node]
        assert stats["pid"] == worker.proc.pid and stats["pool"]["max-concurrency"] == 2
        assert isinstance(stats["total"], dict) and "rusage" in stats and "password" not in stats["broker"]
        [queue] = inspect.active_queues()[node]
        assert queue["name"] == QUEUE and "exchange" in queue
        assert isinstance(inspect.revoked()[node], list)
        release.touch()
        assert running.get(timeout=20) == running.id
        wait_for(lambda: inspect.stats()[node]["total"].get(app_module.keyed.name) == 1, what="total counted")

        # What cannot be done answers an error naming it, never KeyError.
        def answer(replies: list[dict[str, Any]]) -> Any:
            [reply] = [r[node] for r in replies if node in r]
            return reply

        for command, reply in (
            ("add_consumer", control.add_consumer("other", reply=True, **mine)),
            ("cancel_consumer", control.cancel_consumer(QUEUE, reply=True, **mine)),
            ("no_such_command", control.broadcast("no_such_command", reply=True, **mine)),
        ):
            error = answer(reply)["error"]
            assert f"jobtable's native worker cannot do {command!r}" in error and "KeyError" not in error, error

        # shutdown: the worker's graceful stop; its binding goes with it.
        assert answer(control.broadcast("shutdown", reply=True, **mine)) == {"ok": "shutting down"}
        assert worker.proc.wait(timeout=30) == 0
    finally:
        worker.stop()
    assert pidbox_bindings(node) == []


def _rate_rows() -> dict[str, Any]:
    t = tables.rate_limit
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return {row.name: row.rate for row in conn.execute(select(t.c.name, t.c.rate))}


def _request_states(ids: list[str]) -> list[Any]:
    t = tables.request
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return list(conn.execute(select(t.c.task_id, t.c.state, t.c.run_at).where(t.c.task_id.in_(ids))))


def _ended_at(task_id: str) -> Any:
    t = tables.result
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return conn.execute(select(t.c.ended_at).where(t.c.task_id == task_id)).scalar_one()


def test_rate_limit_by_remote_control_holds_across_workers(app_module: Any, tmp_path: Path) -> None:
    """``app.control.rate_limit`` answered by every native worker in Celery's
    shape; the rate is stored once in the database, so every worker's next
    take uses it: one task a minute across two workers."""
    workers = [
        NativeWorker(app_module.env, tmp_path / f"w{i}.log", "--queue", QUEUE, "--max-processes", "1")
        for i in range(2)
    ]
    try:
        nodes = {node_of(w) for w in workers}
        control, add = app_module.app.control, app_module.add
        wait_for(lambda: nodes <= {k for r in control.ping(timeout=0.5) for k in r}, what="both nodes answer")

        def replies(*args: Any) -> dict[str, Any]:
            got = control.rate_limit(*args, reply=True, timeout=2)
            return {node: answer for r in got for node, answer in r.items() if node in nodes}

        for bad in ("10/x", "ten/m", "-1/s"):
            answers = replies(add.name, bad)
            assert set(answers) == nodes
            for answer in answers.values():
                assert answer["error"].startswith(f"Invalid rate limit string {bad!r}") and bad in answer["error"]
        assert replies("no.such.task", "1/s") == dict.fromkeys(nodes, {"error": "unknown task"})
        assert _rate_rows() == {}

        assert replies(add.name, "1/m") == dict.fromkeys(nodes, {"ok": "new rate limit set successfully"})
        assert _rate_rows() == {add.name: pytest.approx(1 / 60)}
        sent = [add.apply_async((i, i), queue=QUEUE) for i in range(3)]
        ids = [r.id for r in sent]
        # One runs; the other two are sent back to wait for their tokens, a minute apart.
        wait_for(lambda: sum(r.ready() for r in sent) == 1, what="one task ran")
        wait_for(lambda: [r.state for r in _request_states(ids)] == [tables.SCHEDULED] * 2, what="two wait")
        # Each worker learnt the next token's time from the database: a minute after the first run.
        [ran] = [r for r in sent if r.ready()]
        ended = _ended_at(ran.id)
        assert all((r.run_at - ended).total_seconds() >= 50 for r in _request_states(ids))
        assert sum(r.ready() for r in sent) == 1

        # 0 lifts it (Celery's "disabled"): a new task runs at once on either worker.
        assert replies(add.name, "0") == dict.fromkeys(nodes, {"ok": "rate limit disabled successfully"})
        assert _rate_rows() == {add.name: 0.0}
        assert add.apply_async((5, 5), queue=QUEUE).get(timeout=20) == 10
    finally:
        for worker in workers:
            worker.stop()


def test_clean_stop_removes_the_nodes_binding(app_module: Any, tmp_path: Path) -> None:
    worker = NativeWorker(app_module.env, tmp_path / "w.log", "--queue", QUEUE, "--max-processes", "1")
    node = node_of(worker)
    wait_for(lambda: pidbox_bindings(node), what="pidbox bound")
    worker.stop()
    assert worker.proc.returncode == 0
    assert pidbox_bindings(node) == []
    # Broadcasts after the stop leave no row for the stopped node.
    app_module.app.control.ping(timeout=0.2)
    assert queue_rows(node) == []


def test_killed_workers_binding_is_removed_by_a_peer_or_the_next_start(app_module: Any, tmp_path: Path) -> None:
    first = NativeWorker(app_module.env, tmp_path / "a.log", "--queue", QUEUE, "--max-processes", "1")
    node = node_of(first)
    wait_for(lambda: pidbox_bindings(node), what="pidbox bound")
    first.proc.send_signal(signal.SIGKILL)  # members die with it (PR_SET_PDEATHSIG)
    first.proc.wait(timeout=10)
    app_module.app.control.ping(timeout=0.2)  # a broadcast lands in the dead node's queue
    wait_for(lambda: queue_rows(node), what="ghost control row")
    # The next worker (a peer too) removes the dead node's queue and its rows.
    second = NativeWorker(app_module.env, tmp_path / "b.log", "--queue", QUEUE, "--max-processes", "1")
    try:
        wait_for(lambda: not pidbox_bindings(node) and not queue_rows(node), timeout=30, what="ghost removed")
    finally:
        second.stop()


def test_logs_as_a_celery_worker(app_module: Any, tmp_path: Path) -> None:
    """Celery's worker_log_format, and its received / succeeded / raised lines."""
    queue = "celery_native_logs"
    ok = app_module.add.apply_async((1, 2), queue=queue)
    bad = app_module.explode.apply_async(("boom",), queue=queue)
    out = subprocess.run(
        [sys.executable, "-m", "jobtable", "worker", "--celery-app", "tests.celery_native_app:app",
         "--queue", queue, "--burst", "--max-processes", "1"],
        env=app_module.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert f"INFO/MainProcess] Task {app_module.add.name}[{ok.id}] received" in text
    assert re.search(rf"INFO/MainProcess\] Task {re.escape(app_module.add.name)}\[{ok.id}\] succeeded in [0-9.e-]+s: 3",
                     text), text
    assert f"ERROR/MainProcess] Task {app_module.explode.name}[{bad.id}] raised unexpected: ValueError('boom')" in text
    # jobtable's own lines in the app's format too.
    assert re.search(r"^\[\d{4}-\d\d-\d\d [0-9:,]+: INFO/MainProcess\] jobtable worker \d+ stopped\.$", text, re.M), text
