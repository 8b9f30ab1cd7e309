"""Revokes of routed deliveries (issue 18): a job on a queue routed to
RabbitMQ that was revoked (``AsyncResult.revoke()``, the dashboard,
Celery's ``app.control.revoke``: all record a ``jobtable_revoke`` row) is
not run by the native worker that receives it; it gets one REVOKED result
(CANCELLED, ``TaskRevokedError``, never started) and leaves the broker's
queue, while the jobs around it run once.  Real RabbitMQ, one queue per
test (routing/revoked.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobtable
from jobtable.db import revokes_sql, tables
from jobtable.shim.result import AsyncResult

from tests.routing_support import AMQP_URL, delete_queues, depth, new_queue, routes_env
from tests.worker_jobs import ROOT, Log, lines, requests, results, stop, wait_for


@pytest.fixture
def queue(db_url: str) -> Iterator[str]:
    name = new_queue("jt_revoke")
    jobtable.configure(broker_routes={name: AMQP_URL})
    yield name
    delete_queues(name)


def test_revoked_routed_jobs_are_recorded_revoked_and_never_run(
    queue: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    jobs = []
    for i in range(8):
        path = str(tmp_path / f"n{i}")
        job = Log(path, f"n{i}").run_in_worker(queue=queue)
        assert job is not None
        jobs.append((job, path))
    revoked = {jobs[1][0].uuid, jobs[4][0].uuid, jobs[7][0].uuid}
    for uuid in revoked:
        AsyncResult(uuid).revoke()
    assert depth(queue) == 8 and not requests()  # all on the broker, none in the table
    proc = subprocess.Popen(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.worker_jobs", "worker",
         "-q", queue, "--max-processes", "2"],
        env=routes_env(subprocess_env, queue), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: all(results(job.uuid) for job, _ in jobs) and depth(queue) == 0, 60,
                 what="every job to have its result and the queue to empty")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{[r.status for r in results()]}\n{stop(proc)}") from None
    out = stop(proc)
    for job, path in jobs:
        rows = results(job.uuid)
        if job.uuid in revoked:
            assert [(r.status, r.error_type, r.started_at) for r in rows] == [
                (tables.CANCELLED, revokes_sql.REVOKED_ERROR, None)
            ], (job, out)
            assert lines(path) == [], out  # never ran
            assert f"{job.uuid} was revoked (task id); not run." in out
        else:
            assert [r.status for r in rows] == [tables.SUCCESSFUL], (job, out)
            assert len(lines(path)) == 1, out
    assert not requests()


class _Raising:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


def _nested(depth: int) -> object:
    value: object = "v"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("headers", [
    None,
    "not a dict",
    {"id": 7},  # not a string id
    {"id": "t\x00\udcff", "stamped_headers": ["k"], "stamps": {"k": _Raising()}},
    {"id": "t", "stamped_headers": ["k"], "stamps": {"k": _nested(100_000)}},
    {"id": "t", "stamped_headers": "k", "stamps": ["not", "a", "dict"]},
])
def test_hostile_delivery_headers_are_matched_by_task_id_only(headers: object) -> None:
    """What ``RevokeCheck`` reads of a delivery never raises: a hostile or
    malformed header leaves only its task id (when it is a string) to match."""
    from types import SimpleNamespace

    from jobtable.routing.revoked import _keys_row

    row = _keys_row(3, SimpleNamespace(headers=headers))
    expected = headers.get("id") if isinstance(headers, dict) and isinstance(headers.get("id"), str) else None
    assert row.id == 3 and row.task_id == expected
    task_id, stamps = revokes_sql.keys_of(row)
    assert task_id == expected and isinstance(stamps, list)
