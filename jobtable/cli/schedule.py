"""``jobtable schedule``: scheduled jobs with their last and next run."""

from __future__ import annotations

from datetime import datetime, tzinfo

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


@main.command("schedule")
@click.option("--prune", is_flag=True, help="Delete ledger rows of entries that no longer exist.")
@with_app
def schedule(prune: bool) -> None:
    """Scheduled jobs (JOBTABLE_SCHEDULE and schedule attributes) with their
    last and next run."""
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
