"""The Celery result backend: real Celery workers, jobtable broker and backend."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chord, group, states
from celery.exceptions import ChordError
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult, GroupResult
from sqlalchemy import select

from jobtable.db import clock, tables
from jobtable.db.engine import get_engine
from tests.conftest import ALL_DIALECTS, ROOT, empty_tables
from tests.polling import terminate, wait_for

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def celery_app(request: pytest.FixtureRequest) -> Iterator[Any]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    empty_tables(url)
    env = dict(os.environ, JOBTABLE_DATABASE_URL=url, PYTHONPATH=str(ROOT))
    previous = os.environ.get("JOBTABLE_DATABASE_URL")
    # The app module reads it at import; restored when the module's tests end.
    os.environ["JOBTABLE_DATABASE_URL"] = url
    import importlib

    from kombu import pools

    from tests import celery_backend_app

    module = importlib.reload(celery_backend_app)
    pools.reset()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_backend_app", "worker", "-P", "threads", "-c", "4",
         "-l", "warning", "-n", f"backend-{request.param}-{os.getpid()}@%h"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # The first round trip proves the worker is consuming.
        assert module.add.delay(1, 1).get(timeout=60) == 2
        yield module
    finally:
        terminate(worker, timeout=20)
        pools.reset()
        if previous is None:
            os.environ.pop("JOBTABLE_DATABASE_URL", None)
        else:
            os.environ["JOBTABLE_DATABASE_URL"] = previous


def result_rows(task_id: str) -> list[Any]:
    t = tables.result
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        return list(conn.execute(select(t).where(t.c.task_id == task_id).order_by(t.c.attempt)))


def test_success(celery_app: Any) -> None:
    result = celery_app.add.delay(2, 3)
    assert result.get(timeout=20) == 5
    assert result.state == states.SUCCESS and result.ready() and result.successful()
    assert result.name == "tests.celery_backend_app.add"  # result_extended
    assert result.args == [2, 3]
    (row,) = result_rows(result.id)
    assert (row.status, row.return_value, row.attempt) == ("SUCCESSFUL", "5", 1)


def test_failure_raises_the_tasks_exception(celery_app: Any) -> None:
    result = celery_app.explode.delay("kaboom")
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=20)
    assert result.state == states.FAILURE and result.failed()
    assert "ValueError: kaboom" in result.traceback
    (row,) = result_rows(result.id)
    assert (row.status, row.error_type, row.error_message) == ("ERRORED", "builtins.ValueError", "kaboom")


def test_retries_are_one_row_per_attempt(celery_app: Any) -> None:
    result = celery_app.retry_twice.delay()
    assert result.get(timeout=30) == 2
    # Celery sends the retry before it stores the RETRY state, so with
    # countdown=0 a later attempt can finish first.
    # (task_track_started: an attempt's row says STARTED until its final state.)
    def finished() -> list[Any]:
        rows = result_rows(result.id)
        return rows if len(rows) == 3 and all(r.status != "STARTED" for r in rows) else []

    rows = wait_for(finished, timeout=20)
    assert [(r.attempt, r.status, r.retried) for r in rows] == [
        (1, "ERRORED", True),
        (2, "ERRORED", True),
        (3, "SUCCESSFUL", False),
    ]
    assert rows[0].error_message == "attempt 1 failed"


def test_pending_started_and_timeout(celery_app: Any, tmp_path: Path) -> None:
    assert AsyncResult("no-such-id", app=celery_app.app).state == states.PENDING
    gate = tmp_path / "gate"
    result = celery_app.wait_for_file.delay(str(gate))
    wait_for(lambda: result.state == states.STARTED, timeout=20)
    with pytest.raises(CeleryTimeout):
        result.get(timeout=0.3)
    gate.touch()
    assert result.get(timeout=20) == "released"


def test_forget(celery_app: Any) -> None:
    result = celery_app.add.delay(1, 2)
    assert result.get(timeout=20) == 3
    result.forget()
    assert result_rows(result.id) == []
    # The worker's ack (which deletes the message row, read as STARTED) is
    # written by the transport's ack writer, a moment after the task ran.
    wait_for(lambda: AsyncResult(result.id, app=celery_app.app).state == states.PENDING, timeout=20)


def test_group(celery_app: Any) -> None:
    result = group(celery_app.add.s(i, i) for i in range(6)).apply_async()
    result.save()
    assert result.get(timeout=30) == [0, 2, 4, 6, 8, 10]
    restored = GroupResult.restore(result.id, app=celery_app.app)
    assert restored is not None and [r.id for r in restored.results] == [r.id for r in result.results]
    restored.delete()
    assert GroupResult.restore(result.id, app=celery_app.app) is None


def test_chord_is_counted_in_the_database(celery_app: Any) -> None:
    result = chord(celery_app.add.s(i, i) for i in range(10))(celery_app.tsum.s())
    assert result.get(timeout=30) == 90
    # No chord_unlock polling task was ever sent or run.
    t = tables.result
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        names = set(conn.execute(select(t.c.task_name)).scalars())
    assert "celery.chord_unlock" not in names
    # The chord's bookkeeping row is gone once the body was sent.
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).connect() as conn:
        assert conn.execute(select(tables.group.c.id).where(tables.group.c.id == result.parent.id)).first() is None


def test_chord_with_a_failing_part_fails_the_body(celery_app: Any) -> None:
    result = chord([celery_app.add.s(1, 1), celery_app.explode.s("part failed")])(celery_app.tsum.s())
    # get() raises the part's error or the body's ChordError, whichever it sees first ...
    with pytest.raises((ValueError, ChordError), match="part failed"):
        result.get(timeout=30, propagate=True)
    # ... and the body itself fails with a ChordError naming the culprit.
    wait_for(lambda: AsyncResult(result.id, app=celery_app.app).state == states.FAILURE, timeout=20)
    body = AsyncResult(result.id, app=celery_app.app)
    assert "part failed" in str(body.result) and type(body.result).__name__ == "ChordError"


def test_cleanup_removes_expired_results(celery_app: Any) -> None:
    result = celery_app.add.delay(5, 5)
    assert result.get(timeout=20) == 10
    t = tables.result
    with get_engine(os.environ["JOBTABLE_DATABASE_URL"]).begin() as conn:
        conn.execute(t.update().where(t.c.task_id == result.id).values(ended_at=clock.utcnow() - timedelta(days=3)))
    celery_app.app.backend.cleanup()  # result_expires: 1 day by default
    assert result_rows(result.id) == []



def test_jobs_run_by_the_native_worker_have_async_results(celery_app: Any) -> None:
    import jobtable
    from jobtable import settings
    from tests.sample_jobs import Echo, Fails

    settings.reset()
    jobtable.configure(database_url=os.environ["JOBTABLE_DATABASE_URL"])
    ok = Echo(1, when="now").run_in_worker()
    failed = Fails().run_in_worker()
    assert ok is not None and failed is not None
    assert AsyncResult(ok.uuid, app=celery_app.app).state == states.PENDING
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "jobtable", "--app", "tests.sample_jobs", "worker", "--burst", "--max-processes", "1"],
        env=env, cwd=ROOT, check=True, capture_output=True, timeout=60,
    )
    result = AsyncResult(ok.uuid, app=celery_app.app)
    assert result.get(timeout=5) == {"args": [1], "kwargs": {"when": "now"}}
    assert result.state == states.SUCCESS
    with pytest.raises(ValueError, match="boom"):
        AsyncResult(failed.uuid, app=celery_app.app).get(timeout=5)
    settings.reset()
