"""Which queues ``jobtable worker`` consumes without --queue, and its warning
about registered tasks routed to queues it does not consume.  Real worker
processes, a real app module (tests/routed_shim_app.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.worker_jobs import lines, requests, worker_env

APP = "tests.routed_shim_app"


def _burst(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jobtable", "--app", APP, "worker", "--burst", "--max-processes", "1", *args],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def _send(log: Path) -> None:
    from tests import routed_shim_app

    routed_shim_app.plain.delay(str(log))
    routed_shim_app.urgent.delay(str(log))


def _warnings(out: str) -> list[str]:
    # jobtable's own format ("... WARNING [pid] ...") or, under --celery-app,
    # Celery's ("[...: WARNING/MainProcess] ...").
    # Only the start-up warnings about routing: a loaded machine may add
    # others (a slow SQLite lock, a late heartbeat) that are not the point.
    return [
        line for line in out.splitlines()
        if (" WARNING " in line or ": WARNING/" in line) and "does not consume" in line
    ]


def test_without_queue_it_consumes_where_the_shim_tasks_route(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    _send(log)
    assert sorted(r.queue for r in requests()) == ["celery", "urgent"]
    out = _burst(worker_env(subprocess_env))
    assert sorted(lines(str(log))) == ["plain", "urgent"]
    assert requests() == []
    assert "Consuming celery, urgent: the queues of the registered tasks" in out
    assert _warnings(out) == []


def test_task_default_queue_and_registered_jobs_add_their_queues(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    from tests import routed_shim_app

    log = tmp_path / "ran.log"
    # Where the worker's app (task_default_queue = "work") would send it.
    routed_shim_app.plain.apply_async(args=[str(log)], queue="work")
    env = worker_env(subprocess_env)
    env["ROUTED_DEFAULT_QUEUE"] = "work"
    env["ROUTED_WITH_JOB"] = "1"
    out = _burst(env)
    assert lines(str(log)) == ["plain"]
    assert "Consuming default, urgent, work: the queues of the registered tasks" in out


def test_a_given_queue_warns_about_tasks_routed_elsewhere(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    _send(log)
    out = _burst(worker_env(subprocess_env), "--queue", "celery")
    assert lines(str(log)) == ["plain"]
    assert [r.queue for r in requests()] == ["urgent"]
    (warning,) = _warnings(out)
    assert (
        "Registered task routed to queue 'urgent', which this worker does not consume (--queue celery): "
        "tests.routed_shim_app.urgent. Add --queue urgent, or start another worker for it." in warning
    )


def test_the_queues_setting_is_kept_and_warned_about_too(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    _send(log)
    out = _burst(worker_env(subprocess_env, worker_queues=["urgent"]))
    assert lines(str(log)) == ["urgent"]
    (warning,) = _warnings(out)
    assert "queue 'celery', which this worker does not consume (JOBTABLE_WORKER_QUEUES urgent)" in warning
    assert "tests.routed_shim_app.plain" in warning


def test_a_job_app_without_routes_keeps_the_default_queue(db_url: str, subprocess_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobtable", "worker", "--burst", "--max-processes", "1"],
        env=worker_env(subprocess_env), cwd=str(ROOT), capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "Consuming default: the default queue" in done.stderr


def test_a_celery_app_counts_by_celerys_router(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    env = worker_env(subprocess_env, celery_app="tests.celery_native_app:app")
    env["JT_RECORD"] = str(tmp_path / "record.txt")

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "jobtable", "worker", "--burst", "--max-processes", "1", *args],
            env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=90,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    # The app's task_default_queue is "celery_native" (tests/celery_native_app.py);
    # it imports tests.worker_jobs, whose Jobs go to "default".
    assert "Consuming celery_native, default: the queues of the registered tasks" in run()
    (warning,) = _warnings(run("--queue", "default"))
    assert "routed to queue 'celery_native', which this worker does not consume (--queue default)" in warning
    assert "tests.celery_native_app." in warning and " more. Add --queue celery_native" in warning
