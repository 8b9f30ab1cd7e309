"""A Django 5 project on the Celery-free shim (examples/django_shim): its
shared tasks use the ORM and call a management command, run by the native
worker with ``import celery`` failing; the worker sets Django up and closes
database connections around tasks, as Celery's Django fix-up does."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobtable.shim import Signature, chain
from tests.shim_support import BLOCK_CELERY
from tests.worker_jobs import ROOT, worker_env

pytestmark = pytest.mark.dialects("sqlite", "postgresql")

PROJECT = ROOT / "examples" / "django_shim"
CODE = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"


def _env(subprocess_env: dict[str, str], django_db: Path) -> dict[str, str]:
    env = worker_env(subprocess_env)
    env["DJANGO_SHIM_DB"] = str(django_db)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env["PYTHONPATH"]])
    env.pop("DJANGO_SETTINGS_MODULE", None)  # djproj/celery.py sets it, as in Celery's Django layout
    return env


def _jobtable(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", CODE, *args], cwd=str(PROJECT), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _migrated(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=str(PROJECT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_django_tasks_use_the_orm_and_management_commands(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    django_db = tmp_path / "django.sqlite3"
    env = _env(subprocess_env, django_db)
    _migrated(env)
    # Sent by name from a process without Django, as a web process or a script would.
    added = chain(Signature("notes.tasks.add_note", ("hello",)), Signature("notes.tasks.count_notes").set(immutable=True))
    counted = added.apply_async()
    opened = [Signature("notes.tasks.connection_was_open").apply_async() for _ in range(3)]
    out = _jobtable(env, "--app", "djproj", "worker", "--burst", "--max-processes", "1", "--queue", "celery")
    log = out.stdout + out.stderr
    assert "AppRegistryNotReady" not in log, log
    assert counted.parent.get(timeout=10) == 1  # the management command added it; the ORM counted it
    assert counted.get(timeout=10) >= 1
    # Closed after each task (CONN_MAX_AGE = 0), so never open when one starts.
    assert [r.get(timeout=10) for r in opened] == [False, False, False]
    with sqlite3.connect(django_db) as conn:
        assert conn.execute("SELECT count(*) FROM notes_note WHERE text = 'hello'").fetchone() == (1,)


def test_django_commands_discover_the_installed_apps_tasks(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(subprocess_env, tmp_path / "django.sqlite3")
    listed = _jobtable(env, "--app", "djproj", "list").stdout
    rows = {line.split()[0]: line.split()[1] for line in listed.splitlines() if line.startswith("notes.tasks.")}
    assert rows == {
        "notes.tasks.add_note": "celery",
        "notes.tasks.connection_was_open": "celery",
        "notes.tasks.count_notes": "celery",
    }, listed
    assert "celery.map" not in listed
    # CELERY_BEAT_SCHEDULE, read before the tasks existed, resolved after discovery.
    shown = _jobtable(env, "--app", "djproj", "schedule").stdout
    assert "notes.tasks.add_note" in shown and "every 10s" in shown, shown


def test_without_django_settings_nothing_of_django_runs(db_url: str, subprocess_env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        "from jobtable.shim import Celery\n"
        "from jobtable.shim.app import resolve_beat_schedules\n"
        "app = Celery('plain')\n"
        "app.autodiscover_tasks()\n"
        "resolve_beat_schedules()\n"
        # (kombu's JSON imports django.utils when Django is installed: not a setup)
        "print(sorted(m for m in sys.modules if m.startswith(('django.apps', 'django.db', 'django.conf'))))\n"
    )
    env = {k: v for k, v in subprocess_env.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_settings_module_that_does_not_exist_stops_the_command(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**_env(subprocess_env, tmp_path / "django.sqlite3"), "DJANGO_SETTINGS_MODULE": "no_such_project.settings"}
    done = subprocess.run(
        [sys.executable, "-c", CODE, "--app", "djproj", "list"],
        cwd=str(PROJECT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "no_such_project" in done.stdout + done.stderr
