"""``app.Task = CustomTask`` (an app-wide base class with handler hooks),
``task_queues`` and ``worker_concurrency`` read by the shim's worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobtable.shim import Celery, NotSupported, Task
from tests import shim_custom_app as custom
from tests.shim_support import BLOCK_CELERY
from tests.worker_jobs import ROOT, lines, worker_env


def test_app_task_is_the_base_of_tasks_defined_before_and_after() -> None:
    for task in (custom.double, custom.fail, custom.defined_early):
        assert isinstance(task, custom.CustomTask), task
    assert custom.app.Task is custom.CustomTask


def test_custom_hooks_run_eagerly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hooks.log"
    monkeypatch.setenv("SHIM_CUSTOM_LOG", str(log))
    assert custom.double.apply((4,)).get() == 8
    custom.defined_early.apply((1,))
    assert lines(log) == [
        "on_success tests.shim_custom_app.double 8",
        "after_return tests.shim_custom_app.double SUCCESS",
        "on_failure tests.shim_custom_app.defined_early early 1",
        "after_return tests.shim_custom_app.defined_early FAILURE",
    ]


def test_worker_runs_the_hooks_and_reads_task_queues_and_concurrency(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    doubled = custom.double.delay(21)
    failed = custom.fail.delay("nope")
    early = custom.defined_early.delay(2)
    assert doubled is not None and failed is not None and early is not None
    code = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"
    proc = subprocess.run(
        # No --queue, no --max-processes: task_queues and worker_concurrency decide.
        [sys.executable, "-c", code, "worker", "--app", "tests.shim_custom_app", "--burst"],
        env=worker_env({**subprocess_env, "SHIM_CUSTOM_LOG": str(log)}),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Pool size 1: the app's worker_concurrency" in out
    assert "Consuming celery, custom_q" in out, out
    assert doubled.get(timeout=5) == 42
    assert sorted(lines(log)) == sorted(
        [
            "on_success tests.shim_custom_app.double 42",
            "after_return tests.shim_custom_app.double SUCCESS",
            "on_failure tests.shim_custom_app.fail 'nope'",
            "after_return tests.shim_custom_app.fail FAILURE",
            "on_failure tests.shim_custom_app.defined_early early 2",
            "after_return tests.shim_custom_app.defined_early FAILURE",
        ]
    )


def test_app_task_must_be_a_shim_task_class() -> None:
    app = Celery("bad_base", set_as_current=False)
    for bad in (object, 42, "proj.CustomTask"):
        with pytest.raises(TypeError, match="must subclass jobtable.shim.Task"):
            app.Task = bad  # type: ignore[assignment]
    assert app.Task is Task


@pytest.mark.parametrize(
    "value", [[""], [42], 5, [type("NoName", (), {"name": None})()], ["a\x00b"]]
)
def test_task_queues_refuses_what_names_no_queue(value: Any) -> None:
    app = Celery("bad_queues", set_as_current=False)
    with pytest.raises(NotSupported, match="task_queues"):
        app.conf.task_queues = value
    assert app.conf.task_queues is None


def test_task_queues_takes_names_queues_and_dicts() -> None:
    from kombu import Queue

    from jobtable.shim.conf import queue_names

    assert queue_names([Queue("a"), "b", Queue("a")]) == ["a", "b"]
    assert queue_names({"x": {"exchange": "ignored"}}) == ["x"]
    assert queue_names(None) == []


@pytest.mark.parametrize("value", [-1, True, "4", 2.5])
def test_worker_concurrency_refuses_what_is_no_pool_size(value: Any) -> None:
    app = Celery("bad_concurrency", set_as_current=False)
    with pytest.raises(NotSupported, match="worker_concurrency"):
        app.conf.worker_concurrency = value
    app.conf.worker_concurrency = 0  # one per CPU, as --max-processes 0


def test_a_tasks_app_is_its_own_or_the_current_one() -> None:
    # Celery's task.app: a shared task's is the current app, so
    # `self.app.conf...` works in it as in an @app.task.
    from jobtable.shim import current_app
    from jobtable.shim.registry import registry

    other = Celery("other_app", set_as_current=False)
    try:

        @other.task(name="tests.shim_task_cls.own")
        def own() -> None: ...

        assert own.app is other and own.s()._app is other
        assert custom.double.app is current_app() and current_app() is not other
    finally:
        registry.tasks.pop("tests.shim_task_cls.own", None)
