"""``jobtable schedule``: scheduled jobs with their last and next run.

With ``--celery-app`` (or JOBTABLE_CELERY_APP) the Celery app's
``beat_schedule`` entries are listed too, as ``jobtable worker --celery-app``
schedules them (``shim/celery_beat.py``); an entry the worker would refuse
is refused here, naming it.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

import click

from ..db import engine as db_engine
from ..db import clock, schedules_sql
from ..scheduling import schedule_entries
from .group import main, with_app
from .queue import _table


def _when(value: datetime | None, tz: tzinfo) -> str:
    if value is None:
        return "-"
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def _install_celery_beat(spec: str) -> None:
    """The Celery app's beat entries into JOBTABLE_SCHEDULE, as the worker
    puts them there (its tasks imported first: an entry naming an unknown
    task is refused)."""
    from ..shim import celery_beat, celery_runner

    app: Any = celery_runner.load_app(spec)
    app.loader.import_default_modules()
    app.finalize(auto=True)
    celery_beat.install(app)


@main.command("schedule")
@click.option("--prune", is_flag=True, help="Delete ledger rows of entries that no longer exist.")
@click.option(
    "--celery-app",
    envvar="JOBTABLE_CELERY_APP",
    default=None,
    help="Also list this Celery app's beat_schedule (module:attribute), as `jobtable worker --celery-app` "
    "schedules it. Also JOBTABLE_CELERY_APP.",
)
@with_app
def schedule(prune: bool, celery_app: str | None) -> None:
    """Scheduled jobs (JOBTABLE_SCHEDULE, schedule attributes and, with
    --celery-app, the Celery app's beat_schedule) with their last and next run."""
    if celery_app:
        _install_celery_beat(celery_app)
    entries = schedule_entries()
    now = clock.utcnow()
    with db_engine.connect() as conn, conn.begin():
        pruned = schedules_sql.schedule_prune(conn, [e.name for e in entries]) if prune else []
        rows = schedules_sql.schedule_rows(conn)
    if entries:
        table = []
        for entry in entries:
            tz = entry.schedule.tz
            row = rows.get(entry.name)
            table.append([
                entry.label,
                entry.schedule.raw,
                str(entry.schedule.timezone or tz),
                _when(row.last_slot if row is not None else None, tz),
                _when(entry.schedule.next(now), tz),
            ])
        _table(["job", "schedule", "time zone", "last run", "next run"], table)
    else:
        click.echo("No scheduled jobs. Add [job, cron] pairs to JOBTABLE_SCHEDULE or a schedule attribute to a job.")
    for name in pruned:
        click.echo(f"Pruned the ledger row of removed entry {name!r}.")
    stale = sorted(set(rows) - {e.name for e in entries})
    if stale:
        click.echo(
            f"{len(stale)} ledger row(s) of entries that no longer exist (removed when a worker starts, "
            "or now with --prune): " + ", ".join(stale)
        )
        if not celery_app and any(name.startswith("celery-beat:") for name in stale):
            click.echo("Entries named celery-beat:... are a Celery app's beat_schedule: pass --celery-app to list them.")
