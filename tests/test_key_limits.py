"""Limits per concurrency key set by the job class (issue 16).

A class that keeps the default ``should_enqueue`` gets one pending-or-running
job per key from the unique index; a class that overrides it decides, under
``get_enqueue_lock()``, and its key still groups its jobs.  The races: eight
processes wait at a barrier, then enqueue the same key at once.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

import jobtable
from jobtable import run_in_worker_many
from jobtable.db import clock, finish_sql, tables
from jobtable.db.engine import check_schema, get_engine
from jobtable.exceptions import EnqueueError
from jobtable.messages import CONCURRENCY_LIMIT_HEADER, CUSTOM_LIMIT
from tests.conftest import ALL_DIALECTS
from tests.limit_jobs import (
    REDIS_URL,
    FailsFirstThreePerKey,
    FivePerMinute,
    RedisLockedThreePerKey,
    ThreePerKey,
)
from tests.sample_jobs import Keyed

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 8
JOBS = {"three": ThreePerKey, "five": FivePerMinute, "redis": RedisLockedThreePerKey}


def _enqueue(url: str, kind: str, key: str, barrier: Any, out: Any) -> None:
    try:
        from jobtable import settings

        settings.reset()
        jobtable.configure(database_url=url)
        job = JOBS[kind](key)
        # Warm up (schema check, connection) so the race is the enqueue itself.
        check_schema(get_engine())
        barrier.wait(timeout=60)
        request = job.run_in_worker()
        out.put(("ok", request.uuid if request else None))
    except BaseException as exc:  # report, don't hang the parent
        out.put(("error", repr(exc)))


def _race(url: str, kind: str, key: str) -> int:
    """How many of the racing enqueues were accepted."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [ctx.Process(target=_enqueue, args=(url, kind, key, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r for status, r in results if status == "error"]
    assert not errors, errors
    return sum(r is not None for _status, r in results)


def _rows(key: str) -> list[Any]:
    t = tables.request
    with get_engine().connect() as conn:
        return list(conn.execute(select(t).where(t.c.concurrency_key == key).order_by(t.c.id)))


def _key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # this machine's Redis: no skip, the lock is under test
    yield client
    client.close()


def _burst(env: dict[str, str]) -> str:
    """A native worker (``--app tests.limit_jobs``) until no job is due."""
    proc = subprocess.run(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.limit_jobs",
         "worker", "--burst", "--max-processes", "1"],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


# -- races -------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(2))
def test_three_per_key_race(db_url: str, round_: int) -> None:
    key = _key()
    assert _race(db_url, "three", key) == 3
    assert len(_rows(key)) == 3


@pytest.mark.parametrize("round_", range(2))
def test_five_per_minute_race(db_url: str, round_: int) -> None:
    key = _key()
    assert _race(db_url, "five", key) == 5
    assert len(_rows(key)) == 5


def test_redis_lock_race(db_url: str, redis_client: Any) -> None:
    # The class's own lock replaces the database's: on PostgreSQL nothing
    # else serialises the eight checks (SQLite's write lock would, anyway).
    key = _key()
    assert _race(db_url, "redis", key) == 3
    assert len(_rows(key)) == 3
    counters = {name: redis_client.get(f"jobtable-test:{key}:{name}") for name in ("acquired", "overlaps", "inside")}
    assert counters == {"acquired": b"8", "overlaps": None, "inside": b"0"}
    redis_client.delete(*(f"jobtable-test:{key}:{name}" for name in counters))


def test_redis_lock_taken_once_per_key_in_a_batch(db_url: str, redis_client: Any) -> None:
    # redis-py's lock is not reentrant: a batch with one key five times
    # takes it once (twice would wait for itself).
    key, other = _key(), _key()
    jobs = [RedisLockedThreePerKey(key) for _ in range(5)] + [RedisLockedThreePerKey(other)]
    accepted = run_in_worker_many(jobs)
    assert [r is not None for r in accepted] == [True, True, True, False, False, True]
    assert redis_client.get(f"jobtable-test:{key}:acquired") == b"5"
    redis_client.delete(*(f"jobtable-test:{k}:{n}" for k in (key, other) for n in ("acquired", "inside")))


# -- the limit, the grouping, the rows -------------------------------------------------


def test_own_limit_per_key_and_the_default_one(db_url: str) -> None:
    key, other = _key(), _key()
    assert [ThreePerKey(key).run_in_worker() is not None for _ in range(4)] == [True, True, True, False]
    assert ThreePerKey(other).run_in_worker() is not None  # each key its own three
    # The default should_enqueue: still one per key, from the unique index.
    assert Keyed(key).run_in_worker() is not None
    assert Keyed(key).run_in_worker() is None
    # The key groups the class's jobs as before.
    job = ThreePerKey(key)
    assert job.get_requested_jobs(key).count() == 3
    assert job.count_active_jobs(key) == 3 and job.count_active_jobs() == 4
    assert Keyed(key).get_requested_jobs(key).count() == 1
    rows = {row.task_name: row for row in _rows(key)}
    assert rows["tests.sample_jobs.Keyed"].unique_key == key
    custom = rows["tests.limit_jobs.ThreePerKey"]
    assert custom.unique_key is None
    assert json.loads(custom.message)["headers"][CONCURRENCY_LIMIT_HEADER] == CUSTOM_LIMIT
    assert CONCURRENCY_LIMIT_HEADER not in json.loads(rows["tests.sample_jobs.Keyed"].message)["headers"]


def test_count_active_jobs_counts_running_and_maybe_scheduled(db_url: str) -> None:
    key = _key()
    assert ThreePerKey(key).run_in_worker(delay=3600) is not None
    assert ThreePerKey(key).run_in_worker() is not None
    from jobtable.db import claims_sql

    with get_engine().begin() as conn:
        assert len(claims_sql.claim(conn, ["default"], 10, worker_id="w1", now=clock.utcnow())) == 1
    job = ThreePerKey(key)
    assert job.count_active_jobs(key) == 2
    assert job.count_active_jobs(key, include_scheduled=False) == 1
    assert job.get_processing_jobs(key).count() == 1


def test_retries_keep_the_class_limit(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    # Three jobs share a key; each fails once and is retried while the
    # others wait: a retry must not be dropped as a duplicate key.
    key = _key()
    requests = [FailsFirstThreePerKey(key, str(tmp_path / f"f{i}")).run_in_worker() for i in range(3)]
    assert all(r is not None for r in requests)
    _burst(subprocess_env)
    t = tables.result
    with get_engine().connect() as conn:
        rows = list(conn.execute(select(t.c.attempt, t.c.status, t.c.retried).where(t.c.concurrency_key == key)))
    assert sorted(rows) == [(1, tables.ERRORED, True)] * 3 + [(2, tables.SUCCESSFUL, False)] * 3
    assert _rows(key) == []


def test_next_attempt_row_keeps_the_rule(db_url: str) -> None:
    key = _key()
    assert ThreePerKey(key).run_in_worker() is not None
    assert Keyed(key).run_in_worker() is not None
    now = clock.utcnow()
    for row in _rows(key):
        values = finish_sql.next_attempt_values(row, now, now)
        assert values["unique_key"] == row.unique_key


def test_count_recent_jobs_counts_finished_jobs_in_the_window(db_url: str, subprocess_env: dict[str, str]) -> None:
    key = _key()
    assert [FivePerMinute(key).run_in_worker() is not None for _ in range(3)] == [True] * 3
    _burst(subprocess_env)
    assert _rows(key) == []  # finished: results now
    job = FivePerMinute(key)
    assert job.count_recent_jobs(key, 60) == 3
    assert [FivePerMinute(key).run_in_worker() is not None for _ in range(3)] == [True, True, False]
    assert job.count_recent_jobs(key, timedelta(minutes=1)) == 5
    # Moved out of the window (two minutes ago): they no longer count.
    past = clock.utcnow() - timedelta(minutes=2)
    with get_engine().begin() as conn:
        conn.execute(tables.request.update().where(tables.request.c.concurrency_key == key).values(created_at=past))
        conn.execute(
            tables.result.update().where(tables.result.c.concurrency_key == key).values(requested_at=past, ended_at=past)
        )
    assert job.count_recent_jobs(key, 60) == 0
    assert job.count_recent_jobs(key, 3600) == 5
    with pytest.raises(ValueError, match="0 or more seconds"):
        job.count_recent_jobs(key, -1)


def test_default_lock_only_inside_an_enqueue(db_url: str) -> None:
    with pytest.raises(EnqueueError, match="only be taken inside"):
        with ThreePerKey("x").get_enqueue_lock("x"):
            pass


# -- run_in_worker(retry_attempt=) ---------------------------------------------------


def test_retry_attempt_sets_the_attempt(db_url: str) -> None:
    request = ThreePerKey(_key()).run_in_worker(retries=3, retry_attempt=2)
    assert request is not None and request.attempt == 3 and request.retries == 3
    (row,) = _rows(request.concurrency_key)
    assert row.attempt == 3 and json.loads(row.message)["headers"]["retries"] == 2
    assert ThreePerKey(_key()).run_in_worker().attempt == 1  # type: ignore[union-attr]
    for bad in (-1, 1.5, True):
        with pytest.raises(EnqueueError, match="retry_attempt"):
            ThreePerKey(_key()).run_in_worker(retry_attempt=bad)  # type: ignore[arg-type]


def test_retry_attempt_leaves_the_remaining_retries(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.worker_jobs import Boom, results, start_worker, stop, wait_for, worker_env

    log = str(tmp_path / "log")
    request = Boom(log).run_in_worker(retries=3, retry_attempt=2)  # one retry left
    assert request is not None
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        wait_for(lambda: len(results(request.uuid)) == 2, timeout=30, what="two attempts")
    finally:
        stop(proc)
    assert [(r.attempt, r.retried) for r in results(request.uuid)] == [(3, True), (4, False)]
    with get_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.request)).scalar_one() == 0


# -- migration 0004 --------------------------------------------------------------------


def test_migration_0004_copies_keys_and_downgrade_refuses_shared_ones(tmp_path: Path) -> None:
    from jobtable.db import enqueue_sql, migrate
    from jobtable.db.engine import create_jobtable_engine

    engine = create_jobtable_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine, "0003")
    insert = text(
        "INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, created_at, "
        "attempt, retries, deliveries, crashes, message, concurrency_key) "
        "VALUES (:id, 'app.job', 'default', 0, 'pending', '2026-01-01 00:00:00.000000', "
        "'2026-01-01 00:00:00.000000', 1, 0, 0, 0, '{}', :key)"
    )
    with engine.begin() as conn:
        conn.execute(insert, {"id": "t1", "key": "held"})
    migrate.upgrade(engine)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT unique_key FROM jobtable_request")).scalar_one() == "held"
        # The old row still holds its key against a default-limited enqueue.
        row = {"task_id": "t2", "task_name": "app.job", "queue": "default", "priority": 0, "state": "pending",
               "run_at": clock.utcnow(), "created_at": clock.utcnow(), "attempt": 1, "retries": 0,
               "message": "{}", "concurrency_key": "held"}
        assert enqueue_sql.insert_requests(conn, [dict(row)]) == {}
        # Two jobs with their own limit share it.
        for task_id in ("t3", "t4"):
            assert enqueue_sql.insert_requests(conn, [dict(row, task_id=task_id, unique_key=None, concurrency_key="shared")])
    with pytest.raises(RuntimeError, match="share the concurrency key 'shared'"):
        migrate.downgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobtable_request WHERE task_id = 't4'"))
    migrate.downgrade(engine, "0003")
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == "0003"
    engine.dispose()
