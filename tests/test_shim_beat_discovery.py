"""Beat entries set before their tasks exist (Django settings read by
``config_from_object``) are resolved after task discovery, when the worker
or a command starts; an entry naming a task that does not exist stops the
worker at start, naming the entry and the task."""

from __future__ import annotations

import subprocess
import sys

from tests.shim_support import BLOCK_CELERY
from tests.worker_jobs import ROOT, worker_env

CODE = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"


def jobtable(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CODE, *args], env=worker_env(env), cwd=str(ROOT), capture_output=True, text=True, timeout=120
    )


def test_entries_for_discovered_tasks_are_scheduled(db_url: str, subprocess_env: dict[str, str]) -> None:
    shown = jobtable(subprocess_env, "schedule", "--app", "tests.shim_deferred_app")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "tests.shim_deferred_pkg.tasks.ping" in shown.stdout
    assert "every 5s" in shown.stdout and "every 10s" in shown.stdout


def test_worker_refuses_an_entry_for_a_task_that_does_not_exist(db_url: str, subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "SHIM_DEFERRED_BAD": "1"}
    started = jobtable(env, "worker", "--app", "tests.shim_deferred_app", "--burst")
    out = started.stdout + started.stderr
    assert started.returncode == 1, out
    assert "beat_schedule['typo']" in out and "'tests.shim_deferred_pkg.tasks.pnig'" in out, out
    assert "Traceback" not in out, out
