"""Real ``celery worker`` processes on the jobtable broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jobtable.db import tables

from .conftest import BEHIND_PGBOUNCER
from .polling import terminate
from .transport_helpers import FAST_OPTIONS, rows, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(
        self, env: dict[str, str], record: Path, pool: str, queues: str = "transport_tests", extra: tuple[str, ...] = ()
    ) -> None:
        self.record = record
        self.env = env
        # A file, not a pipe: a worker must never block on a full pipe.
        self.log = record.with_name(f"worker-{pool}.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "worker",
             "-P", pool, "-c", "2", "-Q", queues, "-l", "warning", "-n", f"w{os.getpid()}-{pool}@%h", *extra],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("w"), text=True,
        )
        wait_for(lambda: self.proc.poll() is not None or "READY" in self.text(), timeout=30, what="worker ready")
        assert self.proc.poll() is None, self.log.read_text()

    def text(self) -> str:
        return self.record.read_text() if self.record.exists() else ""

    def lines(self, kind: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.text().splitlines() if line.split()[0] == kind]

    def stop(self) -> None:
        terminate(self.proc, timeout=20)
        # Shown by pytest when the test fails.
        print(self.log.read_text()[-5000:], file=sys.stderr)


@pytest.fixture
def celery_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(subprocess_env)
    env["JT_RECORD"] = str(tmp_path / "record.txt")
    os.environ["JT_RECORD"] = env["JT_RECORD"]
    return env


@pytest.fixture
def app(celery_env: dict[str, str]) -> Iterator[object]:
    os.environ["JOBTABLE_DATABASE_URL"] = celery_env["JOBTABLE_DATABASE_URL"]
    from tests import transport_celery_app

    celery_app = transport_celery_app.app
    _reset_pools(celery_app)
    celery_app.conf.broker_url = "jobtable+" + celery_env["JOBTABLE_DATABASE_URL"]
    yield transport_celery_app
    _reset_pools(celery_app)


def _reset_pools(celery_app: Any) -> None:
    # The module is imported once per test process; each test has its own
    # database, so connections of the previous one must go.
    from kombu import pools

    pools.reset()  # Kombu's global producer pools, keyed by connection
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@BEHIND_PGBOUNCER
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_celery_worker_runs_tasks(db_url: str, celery_env: dict[str, str], app: object, pool: str) -> None:
    mod = app  # tests.transport_celery_app
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), pool, queues="transport_tests,other")
    try:
        now = datetime.now(timezone.utc)
        mod.note.delay("delay")
        mod.note.apply_async(("queued",), queue="other")
        mod.note.apply_async(("prio",), priority=7)
        late = mod.note.apply_async(("countdown",), countdown=1.5)
        mod.note.apply_async(("eta",), eta=now + timedelta(seconds=1.5))
        mod.note.apply_async(("expired",), expires=now - timedelta(seconds=5))
        mod.flaky.delay("f", 2)
        mod.RecordJob("from-job-api").run_in_worker(queue="transport_tests")
        # The countdown/eta messages wait in the table, not in the worker.
        wait_for(lambda: {"delay", "queued", "prio"} <= {t[0] for t in worker.lines("note")}, what="immediate tasks")
        scheduled = [r for r in rows(db_url) if r.task_id == late.id]
        assert scheduled and scheduled[0].state == tables.SCHEDULED
        try:
            wait_for(lambda: {"countdown", "eta"} <= {t[0] for t in worker.lines("note")}, what="delayed tasks")
        except AssertionError:
            print([(r.id, r.queue, r.state, r.run_at, r.worker_id) for r in rows(db_url)], worker.text())
            raise
        assert datetime.now(timezone.utc) >= now + timedelta(seconds=1.5)
        wait_for(lambda: worker.lines("flaky"), what="retried task")
        assert worker.lines("flaky") == [["f", "2"]]
        assert [r[1] for r in worker.lines("retry")] == ["0", "1"]
        try:
            wait_for(lambda: worker.lines("job") == [["from-job-api"]], what="Job run by Celery")
        except AssertionError:
            print([(r.task_name, r.state, r.worker_id, r.deliveries) for r in rows(db_url)], worker.text())
            raise
        assert "expired" not in {t[0] for t in worker.lines("note")}
        wait_for(lambda: not [r for r in rows(db_url) if r.queue in ("transport_tests", "other")], what="queue drained")
    finally:
        worker.stop()
    # Behind PgBouncer: no statement prepared on a pooled connection.
    assert "prepared statement" not in worker.log.read_text()


def test_celery_priority_order(db_url: str, celery_env: dict[str, str], app: object) -> None:
    mod = app
    for priority, tag in [(0, "p0"), (9, "p9"), (3, "p3"), (9, "p9b")]:
        mod.note.apply_async((tag,), priority=priority)
    env = dict(celery_env, JT_PREFETCH="1")
    worker = Worker(env, Path(celery_env["JT_RECORD"]), "solo")
    try:
        wait_for(lambda: len(worker.lines("note")) == 4, what="four tasks")
        assert [t[0] for t in worker.lines("note")] == ["p9", "p9b", "p3", "p0"]
    finally:
        worker.stop()


def test_celery_inspect_ping_and_revoke(db_url: str, celery_env: dict[str, str], app: object) -> None:
    mod = app
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "threads")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "inspect", "ping", "--timeout", "5"],
            env=celery_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert "pong" in out.stdout, out.stdout + out.stderr
        doomed = mod.note.apply_async(("revoked",), countdown=1.0)
        mod.app.control.revoke(doomed.id)
        mod.note.apply_async(("after",), countdown=1.5)
        wait_for(lambda: worker.lines("note"), what="the later task")
        assert [t[0] for t in worker.lines("note")] == ["after"]
        wait_for(lambda: not [r for r in rows(db_url) if r.queue == "transport_tests"], what="revoked message consumed")
    finally:
        worker.stop()


def test_a_busy_prefork_worker_still_answers_remote_control(
    db_url: str, dialect: str, celery_env: dict[str, str], app: Any, tmp_path: Path
) -> None:
    # Both processes busy and more tasks prefetched: on PostgreSQL Celery
    # runs its event loop on this transport, so the consumer is not stuck
    # handing the next task to a full pool and still reads its control queue.
    from jobtable.transport import Transport

    if dialect == "postgresql":
        from kombu import Connection

        assert Connection(app.app.conf.broker_url).transport.implements.asynchronous
    gate = tmp_path / "gate"
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "prefork")
    try:
        for i in range(4):
            app.gated.delay(f"g{i}", str(gate))
        wait_for(lambda: len(worker.lines("started")) == 2, what="both processes busy")
        if dialect == "postgresql":
            out = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "inspect", "ping", "--timeout", "5"],
                env=celery_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
            )
            assert "pong" in out.stdout, out.stdout + out.stderr
        else:
            # SQLite has no fd to watch: Celery's blocking loop (documented).
            assert not Transport.implements.asynchronous
        gate.touch()
        wait_for(lambda: len(worker.lines("gated")) == 4, what="all gated tasks")
    finally:
        gate.touch()
        worker.stop()


def test_celery_task_events_reach_a_monitor(db_url: str, celery_env: dict[str, str], app: Any) -> None:
    # What Flower relies on: task events over the (topic) event exchange.
    import threading

    mod = app
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "threads")
    seen: list[dict[str, Any]] = []
    try:
        with mod.app.connection_for_read() as conn:
            receiver = mod.app.events.Receiver(conn, handlers={"*": seen.append})
            thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False))
            thread.daemon = True
            thread.start()
            wait_for(lambda: any(r.queue.startswith("celeryev.") for r in _bindings(db_url)), what="event queue bound")
            # Publishers cache an exchange's bindings for binding_cache_seconds
            # (documented): a queue bound just now receives what is published
            # after that.  There is no event to await in the worker process.
            time.sleep(2 * FAST_OPTIONS["binding_cache_seconds"])
            result = mod.note.delay("observed")
            # Both events must arrive; they come from two threads of the
            # worker (consumer and pool), so their order is not asserted.
            for kind in ("task-received", "task-succeeded"):
                wait_for(
                    lambda: any(e.get("type") == kind and e.get("uuid") == result.id for e in list(seen)),
                    what=f"{kind} event",
                )
            receiver.should_stop = True
            thread.join(timeout=10)
    finally:
        worker.stop()


def _bindings(db_url: str) -> list[Any]:
    from sqlalchemy import select

    from jobtable.db import engine as db_engine

    with db_engine.get_engine(db_url).connect() as conn:
        return list(conn.execute(select(tables.binding)))


@pytest.mark.parametrize("dialect", ["postgresql"])  # a server that can drop connections
def test_celery_worker_survives_the_database_dropping_its_connections(
    db_url: str, celery_env: dict[str, str], app: Any
) -> None:
    # As when PostgreSQL restarts: every backend of the database is
    # terminated under a running prefork worker (event loop, LISTEN
    # connection included).  Celery's reconnect logic takes over (the
    # transport declares database errors as connection errors) and the
    # worker goes on with tasks sent afterwards.
    from sqlalchemy import create_engine, text

    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "prefork")
    try:
        app.note.delay("before")
        wait_for(lambda: worker.lines("note") == [["before"]], what="a task before")
        admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalar()
        admin.dispose()
        assert killed >= 2  # at least the worker's claim and LISTEN connections
        app.note.delay("after")
        wait_for(lambda: ["after"] in worker.lines("note"), timeout=60, what="a task after the restart")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
