"""The migration guide's four steps on a Django 5 + Celery 5.7 project
(examples/django_celery_project), each measured by the project's driver of
14 checks (``drive.py``) against real PostgreSQL and real worker processes:

0. the reference: Celery on Redis (broker and result backend), as before the migration;
1. broker and backend on jobtable, Celery workers (``celery worker`` and ``celery beat``);
2. ``jobtable worker --celery-app proj`` instead of ``celery worker`` and
   ``celery beat`` (the native worker schedules ``CELERY_BEAT_SCHEDULE``);
3. step 1 with ``register_jobs(app)`` and a Job run by the Celery worker;
4. Celery uninstalled (``import celery`` fails in every process), the imports
   swapped to ``jobtable.shim``, ``jobtable --app proj worker``.

Nothing of the project changes between steps but what the guide says
(the import lines, the worker command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, fresh_pg_database
from tests.polling import terminate, wait_for
from tests.shim_support import BLOCK_CELERY

PROJECT = ROOT / "examples" / "django_celery_project"
REDIS_PREFIX = f"django-project-{os.getpid()}:"
CELERY_FREE_CLI = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"
CELERY_FREE_DRIVER = BLOCK_CELERY + "\nimport runpy\nrunpy.run_path('drive.py', run_name='__main__')\n"


@pytest.fixture(scope="module")
def project_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """One PostgreSQL database for the project's tables and jobtable's, as
    the guide suggests; Django's migrations run once."""
    for url in fresh_pg_database(request, "jobtable_test_django"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBTABLE_", "DJANGO_", "PROJ_"))}
        env.update(
            PROJ_DATABASE_URL=url,
            JOBTABLE_DATABASE_URL=url,
            PYTHONPATH=os.pathsep.join([str(PROJECT), str(ROOT)]),
            PYTHONUNBUFFERED="1",
        )
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield env


class Process:
    """A worker (or beat) of the project, its output in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, ready: str) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or ready in self.text(), timeout=60, what=f"{name} up")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        terminate(self.proc, timeout=30)


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "proj", *args]


def step_processes(step: int, tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, command, line that says it is up) of each process of the step,
    in start order: the commands of the guide."""
    beat = ("beat", _celery("beat", "-l", "info", "-s", str(tmp / "celerybeat-schedule")), "beat: Starting")
    celery_worker = (
        "celery worker",
        _celery("worker", "-l", "info", "-c", "3", "-n", f"proj-{os.getpid()}@%h", "--without-mingle", "--without-gossip"),
        " ready.",
    )
    if step in (0, 1, 3):
        return [celery_worker, beat]
    if step == 2:
        native = [sys.executable, "-m", "jobtable", "worker", "--celery-app", "proj", "--max-processes", "3"]
        # No celery beat: the native worker sends the beat entries itself.
        return [("jobtable worker", native, " consuming ")]
    if step == 4:
        return [("jobtable worker", [sys.executable, "-c", CELERY_FREE_CLI, "--app", "proj", "worker", "--max-processes", "3"], " consuming ")]
    raise ValueError(step)


def step_env(step: int, env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    if step == 0:
        env["PROJ_REDIS_URL"] = os.environ.get("PROJ_REDIS_URL", "redis://127.0.0.1:6379/9")
        env["PROJ_REDIS_PREFIX"] = REDIS_PREFIX  # this test process's keys only (a shared server)
    if step == 3:
        env["PROJ_STEP"] = "3"
    if step == 4:
        env["PROJ_CELERY_FREE"] = "1"  # stands for the swapped import lines
    return env


def run_step(step: int, env: dict[str, str], tmp: Path) -> tuple[list[dict[str, Any]], str]:
    """Start the step's processes, run the driver; its checks and the logs."""
    # What an earlier step left waiting (a beat entry sent as its worker
    # stopped) is not this step's.
    engine = create_engine(env["PROJ_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobtable_request"))
    engine.dispose()
    env = step_env(step, env)
    started: list[Process] = []
    try:
        for name, cmd, ready in step_processes(step, tmp):
            started.append(Process(name, cmd, env, tmp / f"step{step}-{name.replace(' ', '-')}.log", ready))
        driver = [sys.executable, "-c", CELERY_FREE_DRIVER] if step == 4 else [sys.executable, "drive.py"]
        done = subprocess.run(
            [*driver, "--step", str(step)], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180
        )
    finally:
        for process in reversed(started):
            process.stop()
        if step == 0:
            _drop_redis_keys(env["PROJ_REDIS_URL"])
    logs = "\n".join(f"--- {p.name} ---\n{p.text()[-6000:]}" for p in started)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    checks = [row for row in rows if "check" in row]
    assert len(checks) == 14, f"driver output:\n{done.stdout}\n{done.stderr}\n{logs}"
    return checks, f"driver stderr:\n{done.stderr[-4000:]}\n{logs}"


def _drop_redis_keys(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=REDIS_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.parametrize("step", [0, 1, 2, 3, 4])
def test_migration_step(step: int, project_env: dict[str, str], tmp_path: Path) -> None:
    checks, logs = run_step(step, project_env, tmp_path)
    failed = [f"{row['check']}: {row['detail']}" for row in checks if not row["ok"]]
    print(f"step {step}: {14 - len(failed)}/14")
    assert not failed, "\n".join(failed) + "\n" + logs
