"""``jobtable.shim.signals``: Celery's signals with Celery's names, senders and
keyword arguments, sent by the shim's worker path (the native worker, with
Celery uninstalled) and by eager runs; handlers written for
``celery.signals`` move unchanged (tests/shim_signal_app.py is such a
module)."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import jobtable.shim
from jobtable.db import tables
from jobtable.shim import signals
from tests import shim_signal_app as app_module
from tests.polling import wait_for
from tests.shim_support import BLOCK_CELERY
from tests.worker_jobs import ROOT, requests, results, stop, worker_env

SIGNALS = [
    "before_task_publish",
    "after_task_publish",
    "task_prerun",
    "task_postrun",
    "task_success",
    "task_failure",
    "task_retry",
    "task_revoked",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
]


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def signal_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "signals.jsonl"
    monkeypatch.setenv("SHIM_SIGNAL_LOG", str(path))
    return path


@pytest.mark.parametrize("name", SIGNALS)
def test_names_and_arguments_are_celerys(name: str) -> None:
    """Checked against the installed Celery (5.7): same name, same keyword arguments."""
    import celery.signals

    ours, theirs = getattr(signals, name), getattr(celery.signals, name)
    assert ours.name == theirs.name == name
    assert ours.providing_args == set(theirs.providing_args or ())
    assert getattr(jobtable.shim, name) is ours  # `from jobtable.shim import task_failure`


def test_worker_sends_task_and_worker_signals(db_url: str, subprocess_env: dict[str, str], signal_log: Path) -> None:
    added = app_module.sig_add.delay(2, 3)
    boom = app_module.sig_boom.delay("no luck")
    retried = app_module.sig_retry_once.delay()
    assert added is not None and boom is not None and retried is not None
    published = read(signal_log)
    assert [(e["signal"], e["task"], e["task_id"]) for e in published if e["signal"] == "before_task_publish"] == [
        ("before_task_publish", "tests.shim_signal_app.sig_add", added.id),
        ("before_task_publish", "tests.shim_signal_app.sig_boom", boom.id),
        ("before_task_publish", "tests.shim_signal_app.sig_retry_once", retried.id),
    ]
    assert [e["args"] for e in published if e["signal"] == "before_task_publish"][0] == [2, 3]
    assert [(e["task_id"], e["routing_key"]) for e in published if e["signal"] == "after_task_publish"] == [
        (added.id, "celery"),
        (boom.id, "celery"),
        (retried.id, "celery"),
    ]
    # A header set by a before_task_publish receiver travels in the message.
    assert {json.loads(r.message)["headers"]["x-from-signal"] for r in requests()} == {
        "seen tests.shim_signal_app.sig_add",
        "seen tests.shim_signal_app.sig_boom",
        "seen tests.shim_signal_app.sig_retry_once",
    }
    signal_log.unlink()

    code = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"
    proc = subprocess.Popen(
        # --app after the subcommand, as the migration guide writes it.
        [sys.executable, "-c", code, "worker", "--app", "tests.shim_signal_app", "--queue", "celery", "--max-processes", "1"],
        env=worker_env({**subprocess_env, "SHIM_SIGNAL_LOG": str(signal_log)}),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert added.get(timeout=30) == 5
        assert retried.get(timeout=30) == 1
        with pytest.raises(ValueError):
            boom.get(timeout=30)
        wait_for(lambda: sum(e["signal"] == "task_postrun" for e in read(signal_log)) == 4, timeout=10)
    finally:
        out = stop(proc)
    assert "blocked by the test" not in out and "Traceback" not in out, out
    events = read(signal_log)
    supervisor = proc.pid
    by_signal: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_signal.setdefault(event["signal"], []).append(event)

    [ready] = by_signal["worker_ready"]
    [shutdown] = by_signal["worker_shutdown"]
    assert ready["pid"] == shutdown["pid"] == supervisor
    assert ready["hostname"].startswith("jobtable@") and ready["app"] == "shim_signals"
    assert events[-1]["signal"] == "worker_shutdown"
    inits = by_signal["worker_process_init"]
    assert inits and all(e["ppid"] == supervisor and e["pid"] != supervisor for e in inits)
    assert inits[0]["sender"].startswith("jobtable@")
    member_pids = {e["pid"] for e in inits}

    task_events = [e for e in events if e["signal"].startswith("task_")]
    assert {e["pid"] for e in task_events} <= member_pids
    add_events = [e["signal"] for e in task_events if e["task"] == "tests.shim_signal_app.sig_add"]
    assert add_events == ["task_prerun", "task_success", "task_postrun"]
    [prerun] = [e for e in task_events if e["signal"] == "task_prerun" and e["task"].endswith("sig_add")]
    assert prerun["same"] and prerun["task_id"] == added.id and prerun["args"] == [2, 3] and prerun["kwargs"] == {}
    [success] = [e for e in task_events if e["signal"] == "task_success"  and e["task"].endswith("sig_add")]
    assert success["result"] == 5 and success["runtime_ok"]

    boom_events = [e for e in task_events if e["task"] == "tests.shim_signal_app.sig_boom"]
    assert [e["signal"] for e in boom_events] == [
        "task_prerun",
        "task_failure",
        "task_failure[sig_boom]",  # sender=sig_boom; the sender=sig_add handler never ran
        "task_postrun",
    ]
    failure = boom_events[1]
    assert failure["task_id"] == boom.id and failure["exception"] == "ValueError: no luck"
    assert failure["args"] == ["no luck"] and failure["has_traceback"] and failure["einfo_has_text"]
    assert boom_events[3]["state"] == "FAILURE"

    retry_events = [(e["signal"], e.get("state")) for e in task_events if e["task"].endswith("sig_retry_once")]
    assert retry_events == [
        ("task_prerun", None),
        ("task_retry", None),
        ("task_postrun", "RETRY"),
        ("task_prerun", None),
        ("task_success", None),
        ("task_postrun", "SUCCESS"),
    ]
    [retry] = [e for e in task_events if e["signal"] == "task_retry"]
    assert retry["task_id"] == retried.id and retry["retries"] == 0 and "first" in retry["reason"]


def test_eager_runs_send_the_task_signals(signal_log: Path) -> None:
    """Celery traces ``apply()`` too: the same signals, in this process."""
    assert app_module.sig_add.apply((1, 2)).get() == 3
    app_module.sig_boom.apply(("eager",))
    assert [(e["signal"], e["task"].rsplit(".", 1)[1]) for e in read(signal_log)] == [
        ("task_prerun", "sig_add"),
        ("task_success", "sig_add"),
        ("task_postrun", "sig_add"),
        ("task_prerun", "sig_boom"),
        ("task_failure", "sig_boom"),
        ("task_failure[sig_boom]", "sig_boom"),
        ("task_postrun", "sig_boom"),
    ]


def test_connect_weak_dispatch_uid_disconnect() -> None:
    sig = signals.Signal("test_signal", {"x"})
    seen: list[Any] = []

    def strong(sender: Any = None, **kwargs: Any) -> None:
        seen.append(("strong", sender, kwargs["x"]))

    def make_weak() -> None:
        def weak(sender: Any = None, **kwargs: Any) -> None:
            seen.append(("weak", sender))

        sig.connect(weak)  # weak=True: gone with the function, as in Celery
        sig.send(sender="a", x=0)

    sig.connect(strong, weak=False)
    sig.connect(strong, weak=False)  # connected once
    make_weak()
    gc.collect()
    sig.send(sender="b", x=1)
    assert seen == [("strong", "a", 0), ("weak", "a"), ("strong", "b", 1)]

    seen.clear()
    sig.connect(lambda sender=None, **kw: seen.append(("lambda", sender)), weak=False, dispatch_uid="one")
    sig.connect(lambda sender=None, **kw: seen.append(("again", sender)), weak=False, dispatch_uid="one")
    sig.send(sender="c", x=2)
    assert seen == [("strong", "c", 2), ("lambda", "c")]
    assert sig.disconnect(strong) and sig.disconnect(dispatch_uid="one")
    assert not sig.disconnect(strong)
    assert sig.send(sender="d", x=3) == [] and not sig.has_listeners()


def test_sender_filtering_by_object_and_by_name() -> None:
    sig = signals.Signal("test_signal")
    seen: list[str] = []
    task = app_module.sig_add

    @sig.connect(sender=task)
    def only_task(sender: Any = None, **kwargs: Any) -> None:
        seen.append("task")

    @sig.connect(sender="tests.shim_signal_app.sig_add")
    def only_name(sender: Any = None, **kwargs: Any) -> None:
        seen.append("name")

    sig.send(sender=task)
    sig.send(sender="tests.shim_signal_app.sig_add")
    sig.send(sender=app_module.sig_boom)
    assert seen == ["task", "name"]
    assert only_task.__name__ == "only_task"  # the decorator returns the function


def test_a_receiver_must_take_keyword_arguments() -> None:
    def no_kwargs(sender: Any) -> None: ...

    with pytest.raises(ValueError, match="no_kwargs.*must accept keyword arguments"):
        signals.task_failure.connect(no_kwargs)
    with pytest.raises(TypeError, match="not callable"):
        signals.task_failure._connect(42, None, True, None)  # type: ignore[arg-type]


def test_a_raising_receiver_is_logged_and_the_task_still_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    def broken(sender: Any = None, **kwargs: Any) -> None:
        raise Hostile()

    signals.task_success.connect(broken, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="jobtable.shim"):
            assert app_module.sig_add.apply((2, 2)).get() == 4
    finally:
        signals.task_success.disconnect(broken)
    assert any("Signal handler" in r.getMessage() and "task_success" in r.getMessage() for r in caplog.records)


def test_worker_sends_task_revoked(db_url: str, subprocess_env: dict[str, str], signal_log: Path) -> None:
    """As a Celery worker: a revoked task it receives is never run
    (``terminated=False``); a running one it terminates sends
    ``terminated=True, signum=15`` and no failure handlers."""
    from jobtable.shim import AsyncResult, TaskRevokedError, states

    early_id = "revoked-before-it-was-sent"
    AsyncResult(early_id).revoke()  # remembered: a message with this id sent later is revoked at claim
    early = app_module.sig_add.apply_async((1, 1), task_id=early_id)
    # Sent, then revoked while it waits: left for the worker, which discards
    # it (task_revoked from the worker, as Celery's); PENDING until then.
    waiting = app_module.sig_add.apply_async((3, 3))
    assert waiting is not None
    waiting.revoke()
    assert waiting.state == states.PENDING
    expired = app_module.sig_add.apply_async((2, 2), expires=-1)  # expired before a worker receives it
    linger = app_module.sig_linger.delay("x")
    assert early is not None and expired is not None and linger is not None
    code = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "worker", "--app", "tests.shim_signal_app", "--queue", "celery", "--max-processes", "1"],
        env=worker_env({**subprocess_env, "SHIM_SIGNAL_LOG": str(signal_log)}),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with pytest.raises(TaskRevokedError):
            early.get(timeout=30)
        wait_for(lambda: any(e["signal"] == "linger_started" for e in read(signal_log)), timeout=30)
        linger.revoke(terminate=True)
        with pytest.raises(TaskRevokedError):
            linger.get(timeout=30)
        wait_for(lambda: sum(e["signal"] == "task_revoked" for e in read(signal_log)) == 4, timeout=10)
    finally:
        out = stop(proc)
    events = read(signal_log)
    revoked = [(e["task"], e["task_id"], e["terminated"], e["signum"], e["expired"]) for e in events if e["signal"] == "task_revoked"]
    assert revoked == [
        ("tests.shim_signal_app.sig_add", early.id, False, None, False),
        ("tests.shim_signal_app.sig_add", waiting.id, False, None, False),
        ("tests.shim_signal_app.sig_add", expired.id, False, None, True),
        ("tests.shim_signal_app.sig_linger", linger.id, True, 15, False),
    ], out
    assert early.state == states.REVOKED and linger.state == states.REVOKED
    assert waiting.state == states.REVOKED and isinstance(waiting.result, TaskRevokedError)
    # Sent by the worker (its member), not by this process that called revoke().
    assert os.getpid() not in {e["pid"] for e in events if e["signal"] == "task_revoked"}
    assert expired.state == states.REVOKED and str(expired.result) == "expired"
    # The revoked one never ran; the terminated one ran no failure handler and no postrun (Celery kills it).
    for never_ran in (early.id, waiting.id, expired.id):
        assert not [e for e in events if e.get("task_id") == never_ran and e["signal"] in ("task_prerun", "task_postrun")]
    assert not [e for e in events if e.get("task_id") == linger.id and e["signal"] in ("task_failure", "task_postrun")]
    assert [r.status for r in results(early.id)] == [tables.CANCELLED]
    assert [r.status for r in results(waiting.id)] == [tables.CANCELLED]


def test_beat_sends_the_publish_signals(db_url: str, signal_log: Path) -> None:
    """A beat entry's message goes through the shim's send path, as celery
    beat's ``apply_async`` does: both publish signals, receivers' headers kept."""
    from datetime import datetime, timedelta, timezone

    from jobtable.scheduler import Scheduler

    app = app_module.app
    app.conf.beat_schedule = {
        "add-every-second": {
            "task": "tests.shim_signal_app.sig_add",
            "schedule": 1.0,
            "args": (4, 5),
            "options": {"priority": 3},
        }
    }
    try:
        scheduler = Scheduler()
        start = datetime(2026, 12, 1, 9, 0, 0, 400000, tzinfo=timezone.utc)
        assert not scheduler.tick(start).enqueued  # nothing ahead of time
        report = scheduler.tick(start + timedelta(seconds=1))
    finally:
        app.conf.beat_schedule = {}
    [fired] = report.enqueued
    assert fired.request is not None and not report.errors
    events = read(signal_log)
    [before] = [e for e in events if e["signal"] == "before_task_publish"]
    [after] = [e for e in events if e["signal"] == "after_task_publish"]
    assert (before["task"], before["args"], before["routing_key"]) == ("tests.shim_signal_app.sig_add", [4, 5], "celery")
    assert before["task_id"] == after["task_id"] == fired.request.uuid
    [row] = requests()
    assert row.task_id == fired.request.uuid and row.priority == 3 and row.concurrency_key.startswith("schedule:")
    assert json.loads(row.message)["headers"]["x-from-signal"] == "seen tests.shim_signal_app.sig_add"
