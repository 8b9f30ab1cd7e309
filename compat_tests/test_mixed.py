"""Mixed queues: Jobs (``run_in_worker``) and Celery tasks in one queue, with
a real Celery worker (``register_jobs``: it runs Jobs too) and jobtable's
native worker (``--celery-app``: it runs Celery tasks too) consuming it at
once.  Every job runs exactly once, and a concurrency key is held whichever
worker runs its holder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

import jobtable
from compat_tests.conftest import ROOT, Worker, api_loaded, empty_tables, lines, wait_for
from jobtable.db import engine as db_engine
from jobtable.db import tables

QUEUE = "mixed"


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def mixed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    empty_tables(url)
    tmp = tmp_path_factory.mktemp(f"mixed-{request.param}")
    with api_loaded("celery", url) as (api, tasks):
        from compat_tests import jobs

        # This process enqueues too: its settings may have been read (and
        # cached) before api_loaded set JOBTABLE_DATABASE_URL.
        jobtable.configure(database_url=url)

        env = dict(os.environ, JOBTABLE_DATABASE_URL=url, PYTHONPATH=str(ROOT))
        # Each also has a queue of its own, to place a job on one kind of worker.
        workers = [
            Worker("celery", env, tmp / "celery.log", f"{QUEUE},only_celery", 2, name="celery",
                   app="compat_tests.mixed_app"),
            Worker("native", env, tmp / "native.log", f"{QUEUE},only_native", 2, name="native",
                   app="compat_tests.jobs"),
        ]
        try:
            yield SimpleNamespace(api=api, t=tasks, jobs=jobs, url=url)
        finally:
            for worker in workers:
                worker.stop()


def request_rows(url: str, **where: Any) -> list[Any]:
    t = tables.request
    stmt = select(t).order_by(t.c.id)
    for key, value in where.items():
        stmt = stmt.where(t.c[key] == value)
    with db_engine.get_engine(url).connect() as conn:
        return list(conn.execute(stmt))


def test_jobs_and_tasks_in_one_queue_each_run_once(mixed: Any, tmp_path: Path) -> None:
    path = tmp_path / "runs.log"
    # Every run waits at a gate until both workers hold one: otherwise the
    # first to claim could drain all 80 no-ops before the other polls.
    gate = str(tmp_path / "gate")
    jobs, tasks = [], []
    for i in range(40):
        jobs.append(mixed.jobs.RecordJob(str(path), f"job{i}", gate).run_in_worker(queue=QUEUE))
        tasks.append(mixed.t.record.apply_async((str(path), f"task{i}", gate), queue=QUEUE))
    expected = sorted([f"job{i}" for i in range(40)] + [f"task{i}" for i in range(40)])
    wait_for(lambda: {r[0] for r in lines(Path(gate + ".waiting"))} == {"celery", "native"}, timeout=60,
             what="both workers holding a message")
    Path(gate).touch()
    wait_for(lambda: len(lines(path)) >= 80, timeout=60, what="80 runs")
    wait_for(lambda: not request_rows(mixed.url, queue=QUEUE), what="queue drained")
    runs = lines(path)
    assert sorted(r[0] for r in runs) == expected  # each exactly once
    # Results of both kinds through one AsyncResult.
    for i, request in enumerate(jobs):
        assert mixed.api.app.AsyncResult(request.uuid).get(timeout=30) == f"job{i}"
    for i, sent in enumerate(tasks):
        assert sent.get(timeout=30) == f"task{i}"
    by_worker: dict[tuple[str, str], int] = {}
    for r in runs:
        kind = "job" if r[0].startswith("job") else "task"
        by_worker[(kind, r[-1])] = by_worker.get((kind, r[-1]), 0) + 1
    print("runs by (kind, worker):", by_worker)
    # Both workers took part (which one takes which job is up to the claims).
    assert {w for _, w in by_worker} == {"celery", "native"}, by_worker


@pytest.mark.parametrize("kind", ["job", "task"])
@pytest.mark.parametrize("holder", ["native", "celery"])
def test_concurrency_key_is_held_across_workers(mixed: Any, tmp_path: Path, holder: str, kind: str) -> None:
    """A keyed Job, or a keyed Celery task (``headers={"concurrency_key": ...}``),
    run by ``holder``: while it runs, the same key is refused, whichever queue
    (and so whichever worker) the duplicate is sent to."""
    path, release = tmp_path / "keyed.log", tmp_path / "release"
    account = {"native": 1, "celery": 2}[holder] * 10 + {"job": 1, "task": 2}[kind]
    key = f"account-{account}"

    def send(queue: str) -> Any:
        if kind == "job":
            return mixed.jobs.HoldJob(str(path), str(release), account).run_in_worker(queue=queue)
        return mixed.t.hold.apply_async((str(path), str(release)), queue=queue, headers={"concurrency_key": key})

    try:
        first = send(f"only_{holder}")
        assert first is not None
        first_id = first.uuid if kind == "job" else first.id
        wait_for(lambda: lines(path), what="holder running")
        assert [r[-1] for r in lines(path)] == [holder]
        # While it runs, a duplicate is refused: the Job API returns None, the
        # Celery message is not stored.
        dup = send(QUEUE)
        if kind == "job":
            assert dup is None
        keyed = request_rows(mixed.url, concurrency_key=key)
        assert [r.task_id for r in keyed] == [first_id], [(r.task_name, r.state) for r in keyed]
    finally:
        release.touch()
    assert mixed.api.app.AsyncResult(first_id).get(timeout=30) in (f"held account-{account}", first_id)
    wait_for(lambda: not request_rows(mixed.url, concurrency_key=key), what="key released")
    assert len(lines(path)) == 1  # the duplicate never ran
    if kind == "task":
        assert dup.state == mixed.api.states.PENDING
    # Free again once it finished.
    again = send(QUEUE)
    assert again is not None
    again_id = again.uuid if kind == "job" else again.id
    assert mixed.api.app.AsyncResult(again_id).get(timeout=30) in (f"held account-{account}", again_id)


@pytest.mark.xfail(
    strict=True,
    reason="jobtable bug/limitation: a Celery worker without acks_late acks (deletes the row) when the task "
    "starts, so the concurrency key is free while the task still runs",
)
def test_celery_early_ack_releases_the_key(mixed: Any, tmp_path: Path, worker_factory: Any) -> None:
    path, release = tmp_path / "early.log", tmp_path / "release"
    key = "early-ack"
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # compat_tests.app: task_acks_late off (Celery's default)
    worker_factory("celery", env, "early_ack", 2, name="celery-early")  # threads pool
    try:
        first = mixed.t.hold.apply_async((str(path), str(release)), queue="early_ack", headers={"concurrency_key": key})
        wait_for(lambda: lines(path), what="holder running")
        # The early ack is written by the transport's ack writer a moment
        # after the task started: from then on the key is free.
        wait_for(lambda: not request_rows(mixed.url, concurrency_key=key), what="the early ack written")
        mixed.t.hold.apply_async((str(path), str(release)), queue="nobody", headers={"concurrency_key": key})
        # Expected: the running holder keeps the key, so the duplicate is not stored.
        assert [r.task_id for r in request_rows(mixed.url, concurrency_key=key)] == [first.id]
    finally:
        release.touch()
