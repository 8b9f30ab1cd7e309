"""Revokes sent through Celery's remote control (``app.control.revoke``,
``revoke_by_stamped_headers``) on the jobtable broker last: recorded at
publish, checked before delivery, so a Celery worker started after the
revoke never receives the task, which reads REVOKED."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celery import chain, group

from jobtable.db import clock, revokes_sql, tables
from jobtable.db import engine as db_engine
from jobtable.shim import AsyncResult, states

from .test_transport_celery import ROOT, Worker, app, celery_env  # noqa: F401  (fixtures)
from .transport_helpers import rows, wait_for


def _revoked_values() -> set[tuple[str, str, str]]:
    with db_engine.get_engine().connect() as conn:
        return {(r.kind, r.name, r.value) for r in revokes_sql.listed(conn, clock.utcnow())}


def test_revoked_while_no_worker_runs_is_never_delivered(db_url: str, celery_env: dict[str, str], app: object) -> None:
    mod = app  # tests.transport_celery_app
    doomed = mod.note.delay("doomed")
    mod.app.control.revoke(doomed.id)
    # Revoked before it is even sent, as Celery allows.
    mod.app.control.revoke(["later-id", "other-later"])
    mod.note.apply_async(("later",), task_id="later-id")
    # A nested canvas stamped as a whole: every member carries the stamp.
    stamped = group(chain(mod.note.s("s-chain-1"), mod.note.s("s-chain-2")), mod.note.s("s-member"))
    stamped.stamp(flow="f-1")
    mod.app.control.revoke_by_stamped_headers({"flow": ["f-1"]})
    members = stamped.apply_async()
    assert _revoked_values() >= {
        ("task", "", doomed.id),
        ("task", "", "later-id"),
        ("task", "", "other-later"),
        ("stamp", "flow", "f-1"),
    }
    mod.note.delay("kept")
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "threads")
    try:
        wait_for(lambda: worker.lines("note"), what="the kept task")
        wait_for(lambda: not [r for r in rows(db_url) if r.queue == "transport_tests"], what="queue drained")
        assert [t[0] for t in worker.lines("note")] == ["kept"]
        # The chain's first task and the group's lone member were sent and
        # revoked; the chain's tail is never sent (PENDING, as in Celery).
        chained, lone = members.results
        member_ids = [chained.parent.id, lone.id]
        assert AsyncResult(chained.id).state == states.PENDING
        # `celery inspect revoked` lists the revokes made before the worker started.
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "inspect", "revoked", "--timeout", "10"],
            env=celery_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert doomed.id in out.stdout and "other-later" in out.stdout, out.stdout + out.stderr
        for task_id in [doomed.id, "later-id", *member_ids]:
            assert AsyncResult(task_id).state == states.REVOKED, task_id
    finally:
        worker.stop()


def test_a_revoke_reaches_a_running_worker_that_missed_nothing(
    db_url: str, celery_env: dict[str, str], app: object
) -> None:
    """With a worker running, its in-memory copy and the table agree: a
    countdown task revoked while waiting never runs, and its row is gone."""
    mod = app
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "threads")
    try:
        doomed = mod.note.apply_async(("doomed",), countdown=1.0)
        mod.app.control.revoke(doomed.id)
        mod.note.apply_async(("after",), countdown=1.5)
        wait_for(lambda: worker.lines("note"), what="the later task")
        wait_for(lambda: not [r for r in rows(db_url) if r.queue == "transport_tests"], what="queue drained")
        assert [t[0] for t in worker.lines("note")] == ["after"]
        assert AsyncResult(doomed.id).state == states.REVOKED
    finally:
        worker.stop()


def test_broadcast_parsing_ignores_what_is_not_a_revoke(db_url: str, app: object) -> None:
    from jobtable.transport.revoke_broadcasts import revokes_in

    assert revokes_in("celery.pidbox", {"body": '{"method": "ping", "arguments": {}}'}) == []
    assert revokes_in("celery.pidbox", {"body": "not json"}) == []
    assert revokes_in("celery.pidbox", {"body": '["a list"]'}) == []
    assert revokes_in("celery", {"body": '{"method": "revoke", "arguments": {"task_id": "x"}}'}) == []
    assert revokes_in("celery.pidbox", {"body": '{"method": "revoke", "arguments": {"task_id": "x"}}'}) == [
        ("task", "", "x")
    ]
    assert revokes_in(
        "celery.pidbox", {"body": '{"method": "revoke_by_stamped_headers", "arguments": {"headers": ["a=b=c"]}}'}
    ) == [("stamp", "a", "b=c")]
    assert tables.REVOKE_TASK == "task"
