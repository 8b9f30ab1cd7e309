"""Reading requests, processes and results from Python (jobtable/records.py),
against real PostgreSQL and SQLite, and a real worker for ``wait()``."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

import jobtable
from jobtable import JobNotFound, JobProcess, JobRequest, JobResult, JobStateError
from jobtable import records, result_wait
from jobtable.db import cancels_sql, claims_sql, clock, result_rows, tables, workers_sql
from jobtable.db.engine import get_engine
from tests.sample_jobs import Echo, Keyed
from tests.worker_jobs import Add, Boom, start_worker, stop, worker_env
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def claim(uuid: str, queue: str = "default") -> Any:
    with get_engine().begin() as conn:
        (row,) = claims_sql.claim(conn, [queue], 1, worker_id="native:w1", now=clock.utcnow())
    assert row.task_id == uuid
    return row


def finish(uuid: str, status: str = tables.ERRORED, return_value: str | None = None, queue: str = "default") -> None:
    """Record a request as finished, the way a worker does (one commit)."""
    with get_engine().begin() as conn:
        (row,) = claims_sql.claim(conn, [queue], 1, worker_id="native:w1", now=clock.utcnow())
        assert row.task_id == uuid
        conn.execute(tables.request.delete().where(tables.request.c.id == row.id))
        values = result_rows.result_values(row, status, ended_at=clock.utcnow())
        if return_value is not None:
            values["return_value"] = return_value
        conn.execute(insert(tables.result).values(values))


def test_public_names_and_backward_compatible_request(db_url: str) -> None:
    assert jobtable.JobRequest is JobRequest and jobtable.JobResult is JobResult and jobtable.JobProcess is JobProcess
    request = Echo().run_in_worker()
    assert isinstance(request, JobRequest)
    # run_in_worker's JobRequest keeps its fields (and gains methods only).
    assert [f.name for f in dataclasses.fields(JobRequest)] == [
        "id", "uuid", "job_class", "queue", "priority", "state", "start_at",
        "concurrency_key", "attempt", "retries", "created_at",
    ]  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.state = "running"  # type: ignore[misc]


def test_request_queries(db_url: str) -> None:
    a = Echo(1).run_in_worker()
    b = Echo(2).run_in_worker(queue="slow")
    c = Keyed("k1").run_in_worker(delay=timedelta(hours=1))
    d = Keyed("k2").run_in_worker()
    assert a and b and c and d
    q = JobRequest.query
    # Newest first.
    assert [r.uuid for r in q] == [d.uuid, c.uuid, b.uuid, a.uuid]
    assert q.count() == len(q) == 4 and q.exists()
    assert q.first() == JobRequest.query.filter(uuid=d.uuid).first()
    assert [r.uuid for r in q.filter(job_class=Echo)] == [b.uuid, a.uuid]
    assert [r.uuid for r in q.filter(job_class=Keyed.job_name())] == [d.uuid, c.uuid]
    assert [r.uuid for r in q.filter(queue="slow")] == [b.uuid]
    assert [r.uuid for r in q.filter(state="scheduled")] == [c.uuid]
    assert [r.uuid for r in q.filter(state=["pending"], job_class=Keyed)] == [d.uuid]
    assert [r.uuid for r in q.filter(concurrency_key="k1")] == [c.uuid]
    # "" is "no key": Echo's jobs.
    assert {r.uuid for r in q.filter(concurrency_key="")} == {a.uuid, b.uuid}
    # Filters chain and do not change the query they came from.
    echo = q.filter(job_class=Echo)
    assert echo.filter(queue="default").count() == 1 and echo.count() == 2
    assert not q.filter(uuid="nope").exists() and q.filter(uuid="nope").first() is None
    # Pages: keyset on the id, every row once, in order.
    pages = list(q.pages(size=3))
    assert [len(p) for p in pages] == [3, 1]
    assert [r.uuid for p in pages for r in p] == [d.uuid, c.uuid, b.uuid, a.uuid]
    assert [r.uuid for r in q.page(limit=2, before_id=c.id)] == [b.uuid, a.uuid]


def test_query_arguments_are_checked(db_url: str) -> None:
    with pytest.raises(ValueError, match="state='done' is not one of scheduled, pending, claimed, running"):
        JobRequest.query.filter(state="done")
    with pytest.raises(ValueError, match="status='FINE' is not one of SUCCESSFUL"):
        JobResult.query.filter(status="fine")
    with pytest.raises(TypeError, match="job_class=42"):
        JobResult.query.filter(job_class=42)  # type: ignore[arg-type]
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="limit="):
            JobRequest.query.page(limit=bad)  # type: ignore[arg-type]


def test_processes_and_refresh(db_url: str) -> None:
    request = Echo().run_in_worker()
    other = Echo().run_in_worker(queue="slow")
    assert request and other
    assert request.refresh() == request
    assert not JobProcess.query.exists()
    row = claim(request.uuid)
    # Claimed, not started: no live worker reports it running yet.
    claimed = request.refresh()
    assert claimed is not None and claimed.state == "claimed"
    assert not JobProcess.query.exists()
    assert JobRequest.query.filter(state="claimed").first() == claimed
    # Its worker's heartbeat reports it: now it runs.
    with get_engine().begin() as conn:
        workers_sql.register_worker(
            conn, "native:w1", hostname="h", pid=1, queues=["default"], processes=1, now=clock.utcnow()
        )
        assert workers_sql.heartbeat(conn, ["native:w1"], clock.utcnow(), {"native:w1": row.id}) == set()
    refreshed = request.refresh()
    assert refreshed is not None and refreshed.state == "running"
    assert not JobRequest.query.filter(state="claimed").exists()
    (process,) = JobProcess.query
    assert (process.uuid, process.worker_id, process.attempt) == (request.uuid, "native:w1", 1)
    assert process.started_at is not None
    assert JobProcess.query.filter(worker_id="native:w1").count() == 1
    assert JobProcess.query.filter(worker_id="native:other").count() == 0
    assert JobRequest.query.filter(state="running").first() == refreshed


def test_results_and_value(db_url: str) -> None:
    ok = Echo().run_in_worker()
    bad = Echo().run_in_worker()
    assert ok and bad
    finish(ok.uuid, tables.SUCCESSFUL, return_value=json.dumps({"sum": 5}))
    finish(bad.uuid, tables.ERRORED)
    assert ok.refresh() is None
    result = ok.result()
    assert result is not None and result.successful and result.value == {"sum": 5}
    assert bad.result() == JobResult.query.filter(status="errored").first()
    assert [r.uuid for r in JobResult.query] == [bad.uuid, ok.uuid]
    assert JobResult.query.filter(status=["SUCCESSFUL", "LOST"]).count() == 1
    assert JobResult.query.filter(job_class=Echo, queue="default").count() == 2
    assert JobResult.query.filter(uuid=ok.uuid).first() == result


def test_cancel(db_url: str) -> None:
    waiting = Echo().run_in_worker(delay=60)
    running = Echo().run_in_worker()
    assert waiting and running
    cancelled = waiting.cancel()
    assert cancelled.status == tables.CANCELLED and cancelled.uuid == waiting.uuid
    assert waiting.refresh() is None and waiting.result() == cancelled
    with pytest.raises(JobNotFound, match="No pending job"):
        waiting.cancel()
    claim(running.uuid)
    # A running job is asked to stop (its native worker does it: test_worker_cancel.py);
    # no worker runs it here, so the wait times out and the mark stays.
    with pytest.raises(TimeoutError):
        running.cancel(timeout=0)
    with get_engine().begin() as conn:
        row = conn.execute(select(tables.request.c.id).where(tables.request.c.task_id == running.uuid)).scalar()
        assert cancels_sql.asked(conn, [row], clock.utcnow()) == {row: cancels_sql.CANCELLED_ERROR}
    refreshed = running.refresh()
    assert refreshed is not None and refreshed.state == "claimed"  # no worker reports it started
    with pytest.raises(JobNotFound):
        records.cancel_waiting(get_engine().connect(), "no-such-uuid", clock.utcnow())


def test_retry(db_url: str) -> None:
    request = Echo().run_in_worker()
    assert request
    finish(request.uuid)
    first = request.result()
    assert first is not None
    retry = first.retry()
    assert (retry.uuid, retry.attempt, retry.state) == (request.uuid, 2, "pending")
    # It is waiting now: a second retry of the same attempt is refused.
    with pytest.raises(JobStateError, match="is pending; only finished jobs"):
        first.retry()
    finish(request.uuid)
    second = request.result()
    assert second is not None and second.attempt == 2
    (old,) = JobResult.query.filter(uuid=request.uuid).filter(status="ERRORED").page(limit=1, before_id=second.id)
    assert old.retried
    # Only the newest attempt can be retried.
    with pytest.raises(JobStateError, match="newer than this result"):
        old.retry()
    assert second.retry().attempt == 3


def test_retry_respects_the_concurrency_key(db_url: str) -> None:
    first = Keyed("k").run_in_worker()
    assert first
    finish(first.uuid)
    assert Keyed("k").run_in_worker() is not None
    result = first.result()
    assert result is not None
    with pytest.raises(JobStateError, match="concurrency key 'k' is pending or running"):
        result.retry()
    assert not result.query.filter(uuid=first.uuid).first().retried  # type: ignore[union-attr]


def test_concurrent_retries_make_exactly_one_request(db_url: str) -> None:
    for _ in range(8):
        request = Echo().run_in_worker()
        assert request
        finish(request.uuid)
        result = request.result()
        assert result is not None
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def retry(result: JobResult = result) -> None:
            barrier.wait()
            try:
                outcomes.append(result.retry())
            except JobStateError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=retry) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        made = [o for o in outcomes if isinstance(o, JobRequest)]
        assert len(made) == 1 and len(outcomes) == 2, outcomes
        assert JobRequest.query.filter(uuid=request.uuid).count() == 1
        JobRequest.query.filter(uuid=request.uuid).first().cancel()  # type: ignore[union-attr]


def test_wait_arguments(db_url: str) -> None:
    request = Echo().run_in_worker()
    assert request
    with pytest.raises(TimeoutError, match="has not finished within 0 s"):
        request.wait(timeout=0)
    for bad, message in [
        (-1, "timeout=-1.*0 .look once. or more"),
        (float("inf"), "timeout=inf.*use timeout=None"),
        (float("nan"), "timeout=nan"),
    ]:
        with pytest.raises(ValueError, match=message):
            request.wait(timeout=bad)
    with pytest.raises(TypeError, match="timeout='1'"):
        request.wait(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(JobNotFound, match="No job has uuid nope"):
        records.wait_for("nope", timeout=1)
    finish(request.uuid, tables.SUCCESSFUL)
    assert request.wait(timeout=0).status == tables.SUCCESSFUL


def test_wait_is_woken_by_the_result(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a wake-up the waiter would look again only after WAIT_CAP.
    monkeypatch.setattr(result_wait, "WAIT_CAP", 60.0)
    request = Echo().run_in_worker()
    assert request
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(request.wait(timeout=120)))
    waiter.start()
    finish(request.uuid, tables.SUCCESSFUL)
    finished = time.monotonic()
    waiter.join(30)
    assert got and got[0].status == tables.SUCCESSFUL
    assert time.monotonic() - finished < 10


def test_wait_with_a_real_worker_follows_retries(db_url: str, subprocess_env: dict[str, str]) -> None:
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1")
    try:
        ok = Add(2, 3).run_in_worker()
        failing = Boom().run_in_worker(retries=2)
        assert ok and failing
        result = ok.wait(timeout=60)
        assert result.status == tables.SUCCESSFUL and result.value == {"sum": 5}
        # The last attempt's result, not the first failure's.
        final = failing.wait(timeout=60)
        assert (final.status, final.attempt, final.retried) == (tables.ERRORED, 3, False)
        assert final.error_type.endswith("ValueError")
        assert JobResult.query.filter(uuid=failing.uuid).count() == 3
    finally:
        stop(proc)


def test_cli_uses_the_same_path(db_url: str) -> None:
    from click.testing import CliRunner

    from jobtable.cli import main

    running = Echo().run_in_worker()
    waiting = Echo().run_in_worker(queue="slow")
    assert running and waiting
    claim(running.uuid)
    # Running (claimed by no live worker here): the CLI asks its worker to
    # stop it, as request.cancel() does, and says the cancel stays asked.
    out = CliRunner().invoke(main, ["cancel", running.uuid, "--timeout", "0.2"])
    assert out.exit_code == 1 and "asked its worker to stop it" in out.output
    listed = CliRunner().invoke(main, ["requests"]).output.splitlines()
    # Newest first, as JobRequest.query reads them.
    assert [line.split()[0] for line in listed[1:]] == [waiting.uuid, running.uuid]
    out = CliRunner().invoke(main, ["retry", running.uuid])
    assert out.exit_code == 1 and "is running; only finished jobs can be retried" in out.output


def test_wait_ends_when_a_retry_was_purged(db_url: str) -> None:
    from jobtable.db import operations_sql

    request = Echo().run_in_worker()
    assert request
    finish(request.uuid)
    first = request.result()
    assert first is not None
    first.retry()
    with pytest.raises(TimeoutError):
        request.wait(timeout=0)  # its retry waits
    with get_engine().begin() as conn:
        assert operations_sql.purge(conn) == 1
    # Nothing will run any more: the retried attempt is the last word.
    final = request.wait(timeout=0)
    assert (final.id, final.retried) == (first.id, True)
