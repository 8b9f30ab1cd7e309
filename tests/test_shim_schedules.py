"""crontab and beat_schedule entries as jobtable schedules, enqueued by
jobtable's scheduler and run by the native worker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jobtable import get_settings
from jobtable.cron import CronError
from jobtable.scheduler import Scheduler
from jobtable.scheduling import schedule_entries
from jobtable.shim import AsyncResult, Celery, NotSupported, crontab, schedule
from jobtable.shim.schedules import interval_to_cron
from tests import shim_tasks as t
from tests.shim_support import run_burst
from tests.worker_jobs import requests


@pytest.mark.parametrize(
    ("spec", "cron"),
    [
        (crontab(), "* * * * *"),
        (crontab(minute=0, hour=0), "0 0 * * *"),
        (crontab(minute="*/15"), "*/15 * * * *"),
        (crontab(minute=30, hour="9-17", day_of_week="mon-fri"), "30 9-17 * * mon-fri"),
        (crontab(minute=0, hour={9, 17}, day_of_week="sunday"), "0 9,17 * * sun"),
        (crontab(minute=0, hour=4, day_of_month="1,15"), "0 4 1,15 * *"),
        (crontab(minute=0, hour=0, day_of_month=1, month_of_year="*/3"), "0 0 1 */3 *"),
    ],
)
def test_crontab_is_a_cron_string(spec: crontab, cron: str) -> None:
    assert spec.cron == cron


def test_crontab_errors() -> None:
    with pytest.raises(CronError):
        crontab(minute=61)
    with pytest.raises(NotSupported, match="both fields"):
        crontab(minute=0, hour=0, day_of_week="fri", day_of_month=13)


@pytest.mark.parametrize(
    ("every", "cron"),
    [
        (60, "* * * * *"),
        (timedelta(minutes=15), "*/15 * * * *"),
        (3600.0, "0 * * * *"),
        (timedelta(hours=6), "0 */6 * * *"),
        (timedelta(days=1), "0 0 * * *"),
        (timedelta(weeks=1), "0 0 * * 0"),
    ],
)
def test_intervals_become_clock_aligned_cron(every: float | timedelta, cron: str) -> None:
    assert interval_to_cron(every) == cron
    assert schedule(run_every=every).cron == cron


@pytest.mark.parametrize("every", [30, 90, timedelta(minutes=7), timedelta(hours=5), timedelta(days=2), 0])
def test_intervals_cron_cannot_express(every: float | timedelta) -> None:
    with pytest.raises(NotSupported, match="divides"):
        interval_to_cron(every)


def test_beat_schedule_is_enqueued_by_the_scheduler(db_url: str, subprocess_env: dict[str, str]) -> None:
    app = Celery("beat", set_as_current=False)
    app.conf.timezone = "Europe/Berlin"
    app.conf.beat_schedule = {
        "add-every-5-minutes": {"task": "tests.shim_tasks.add", "schedule": timedelta(minutes=5), "args": (1, 2)},
        "echo-nightly": {
            "task": "tests.shim_tasks.echo",
            "schedule": crontab(minute=30, hour=2),
            "kwargs": {"value": "night"},
            "options": {"queue": "other", "priority": 3, "expires": 60},
        },
    }
    app.add_periodic_task(3600, t.add.s(5, 5), name="hourly")
    entries = {e.name: e for e in schedule_entries()}
    assert set(entries) == {
        "tests.shim_tasks.add(1, 2) [*/5 * * * * (Europe/Berlin)]",
        'tests.shim_tasks.echo(value="night") [30 2 * * * (Europe/Berlin)]',
        "tests.shim_tasks.add(5, 5) [0 * * * * (Europe/Berlin)]",
    }
    # The entries sit beside the project's own JOBTABLE_SCHEDULE entries.
    assert len(get_settings().schedule) == 3

    scheduler = Scheduler()
    start = datetime(2026, 11, 24, 1, 1, tzinfo=timezone.utc)  # 02:01 in Berlin
    assert scheduler.tick(start).enqueued == []  # new entries start with their next slot
    fired = scheduler.tick(start + timedelta(minutes=29)).enqueued  # 02:30 in Berlin
    assert sorted(f.name for f in fired) == sorted(
        [
            "tests.shim_tasks.add(1, 2) [*/5 * * * * (Europe/Berlin)]",
            'tests.shim_tasks.echo(value="night") [30 2 * * * (Europe/Berlin)]',
        ]
    )
    rows = {r.task_name: r for r in requests()}
    assert rows["tests.shim_tasks.add"].queue == "celery"
    assert (rows["tests.shim_tasks.echo"].queue, rows["tests.shim_tasks.echo"].priority) == ("other", 3)
    out = run_burst(subprocess_env)
    assert "Traceback" not in out, out
    values = {name: AsyncResult(row.task_id).get(timeout=10) for name, row in rows.items()}
    assert values == {"tests.shim_tasks.add": 3, "tests.shim_tasks.echo": "night"}

    # Assigning again replaces the shim's entries.
    app._periodic.clear()
    app.conf.beat_schedule = {}
    assert get_settings().schedule == []


def test_beat_schedule_errors(db_url: str) -> None:
    app = Celery("beat", set_as_current=False)
    # An unknown task may be defined by a module discovered later (Django
    # settings come first): it waits for the worker's start, which refuses it.
    from jobtable.shim.app import _deferred_beat, resolve_beat_schedules

    app.conf.beat_schedule = {"x": {"task": "no.such.task", "schedule": 60}}
    assert app in _deferred_beat
    with pytest.raises(NotSupported, match=r"beat_schedule\['x'\] for the unknown task 'no.such.task'"):
        resolve_beat_schedules()
    _deferred_beat.remove(app)
    app.conf.beat_schedule = {}
    with pytest.raises(NotSupported, match="whole seconds, 1 or more"):
        app.conf.beat_schedule = {"x": {"task": "tests.shim_tasks.add", "schedule": 0.5, "args": (1, 1)}}
    with pytest.raises(NotSupported, match="solar"):
        app.conf.beat_schedule = {"x": {"task": "tests.shim_tasks.add", "schedule": object()}}
    with pytest.raises(NotSupported, match="options"):
        app.conf.beat_schedule = {"x": {"task": "tests.shim_tasks.add", "schedule": 60, "options": {"link": 1}}}
    assert app.conf.beat_schedule == {}  # a schedule that failed is not kept


def test_app_module_beat_schedule_reaches_jobtable_commands(db_url: str, subprocess_env: dict[str, str]) -> None:
    """Importing the app (``--app``) is enough: ``jobtable schedule`` lists the
    entries, and a worker started the same way schedules them."""
    import subprocess
    import sys

    from tests.worker_jobs import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "jobtable", "--app", "tests.shim_beat_app", "schedule"],
        env=subprocess_env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tests.shim_tasks.total([1, 2])" in done.stdout and "15 3 * * *" in done.stdout
    assert 'tests.shim_tasks.echo("tick")' in done.stdout and "*/10 * * * *" in done.stdout
