"""Commands that set up, inspect and operate the queue."""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from typing import Any

import click

from ..db import engine as db_engine
from ..db import migrate as db_migrate
from ..db import purge as db_purge
from .. import records
from ..db import clock, operations_sql, reads_sql, tables
from ..exceptions import JobStateError
from ..records import JobRequest, JobResult
from ..settings import get_settings, setting_source
from .group import main, with_app
from .progress import note, progress


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@main.command()
def migrate() -> None:
    """Create or upgrade the jobtable tables."""
    engine = db_engine.get_engine()
    db_engine.ping(engine)
    started = time.monotonic()
    # Alembic runs a revision as one step: no count to show, but a person at
    # a terminal learns that a long wait (a big jobtable_result) is expected.
    note(f"Migrating {db_engine.describe(engine)} (on millions of results this can take minutes)...")
    last = [started]

    def applied(revision: str, title: str) -> None:
        now = time.monotonic()
        note(f"  applied {revision}{f' ({title})' if title else ''} in {now - last[0]:.1f}s")
        last[0] = now

    before, after = db_migrate.upgrade(engine, on_applied=applied)
    note(f"Done in {time.monotonic() - started:.1f}s.")
    where = db_engine.describe(engine)
    if before == after:
        click.echo(f"{where}: schema is up to date (revision {after}).")
    else:
        click.echo(f"{where}: migrated from {before or 'empty'} to revision {after}.")
    if setting_source("database_url").kind == "default":
        # The zero-config default is a file of the current directory: say so,
        # so that a later command run elsewhere is not a surprise.
        click.echo(
            f"No database is configured, so this is the default SQLite file {engine.url.database} of the "
            "current directory; set JOBTABLE_DATABASE_URL (or database_url in [tool.jobtable]) to use another."
        )


@main.command()
def stats() -> None:
    """Pending, scheduled, claimed (not started) and running jobs, and results by status, per queue."""
    with db_engine.connect() as conn, conn.begin():
        queues, results = reads_sql.stats(conn)
    names = sorted({q.queue for q in queues} | set(results))
    by_queue = {q.queue: q for q in queues}
    rows = []
    for name in names:
        q = by_queue.get(name, reads_sql.QueueStats(name))
        r = results.get(name, {})
        rows.append([name, q.pending, q.scheduled, q.claimed, q.running] + [r.get(s, 0) for s in tables.RESULT_STATUSES])
    routed = get_settings().broker_routes
    if not rows and not routed:
        click.echo("No jobs and no results.")
        return
    if rows:
        _table(["queue", "pending", "scheduled", "claimed", "running"] + [s.lower() for s in tables.RESULT_STATUSES], rows)
    if routed:
        _routed_stats(routed)


def _routed_stats(routed: dict[str, str]) -> None:
    """Queues routed to a broker (issue 18): their depth is the broker's
    (ready messages; unacked ones are running or prefetched), beside the
    key rows the table holds for their keyed jobs."""
    from ..db import routed_sql
    from ..routing import publish, routes

    names = sorted(routed)
    depths = publish.depths(names)
    with db_engine.connect() as conn, conn.begin():
        held = routed_sql.held_count(conn, names)
    click.echo()
    click.echo("Routed to a broker (depth: ready messages in the broker):")
    _table(
        ["queue", "broker", "depth", "key rows held"],
        [[name, routes.display(routed[name]), "?" if depths.get(name) is None else depths[name], held.get(name, 0)]
         for name in names],
    )


@main.command("requests")
@click.option("--queue", "-q", default=None, help="Only this queue.")
@click.option("--job", "job_class", default=None, help="Only this job class (registered name).")
@click.option(
    "--state",
    type=click.Choice([tables.PENDING, tables.SCHEDULED, reads_sql.CLAIMED, tables.RUNNING]),
    multiple=True,
    help="Only these states (repeatable; claimed: fetched by a worker, not started yet).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Most rows shown (1 to 100000).")
def list_requests(queue: str | None, job_class: str | None, state: tuple[str, ...], limit: int) -> None:
    """Jobs waiting or running, newest first (what ``JobRequest.query`` reads)."""
    query = JobRequest.query.filter(queue=queue, job_class=job_class, state=state or None)
    _table(
        ["uuid", "job", "queue", "priority", "state", "start_at", "attempt", "concurrency_key"],
        [
            [r.uuid, r.job_class, r.queue, r.priority, r.state, _ts(r.start_at), r.attempt, r.concurrency_key]
            for r in query.page(limit=limit)
        ],
    )


@main.command("results")
@click.option("--queue", "-q", default=None, help="Only this queue.")
@click.option("--job", "job_class", default=None, help="Only this job class (registered name).")
@click.option("--status", type=click.Choice(tables.RESULT_STATUSES, case_sensitive=False), default=None)
@click.option("--uuid", "task_id", default=None, help="Only the attempts of this job.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Most rows shown (1 to 100000).")
def list_results(queue: str | None, job_class: str | None, status: str | None, task_id: str | None, limit: int) -> None:
    """Finished attempts, newest first (what ``JobResult.query`` reads)."""
    query = JobResult.query.filter(queue=queue, job_class=job_class, status=status, uuid=task_id)
    _table(
        ["uuid", "attempt", "job", "queue", "status", "ended_at", "error"],
        [
            [r.uuid, r.attempt, r.job_class, r.queue, r.status, _ts(r.ended_at), r.error_type]
            for r in query.page(limit=limit)
        ],
    )


@main.command()
@click.argument("uuid")
def retry(uuid: str) -> None:
    """Run a finished job again (its next attempt, same uuid)."""
    with db_engine.connect() as conn, conn.begin():
        request = records.retry_latest(conn, uuid, clock.utcnow())
    click.echo(f"Retrying {uuid} (attempt {request.attempt}).")


def _cancel_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets inf and nan through: both are refused with the fix.
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(
            f"{value!r} is not a number of seconds: give 0 (look once) or more, or leave it out for 30",
            param_hint="--timeout",
        )
    return value


def _job_uuid(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # Checked before the database sees it: a NUL or a lone surrogate would
    # be a driver error (PostgreSQL refuses both), not a clear message.
    problem = None
    if not value:
        problem = "it is empty"
    elif len(value) > 255:
        problem = f"it has {len(value)} characters (a job's uuid has at most 255)"
    elif "\x00" in value:
        problem = "it contains a NUL character"
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problem = "it is not valid text (a lone surrogate)"
    if problem:
        raise click.BadParameter(f"{problem}; give a job's uuid, as `jobtable requests` lists them", param_hint="UUID")
    return value


@main.command()
@click.argument("uuid", callback=_job_uuid)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    callback=_cancel_timeout,
    help="Seconds to wait for a running job to stop (0: ask and look once).",
)
def cancel(uuid: str, timeout: float) -> None:
    """Cancel a job; it is recorded CANCELLED and not retried.

    One that has not started is cancelled at once.  A running one is
    stopped by its native worker (JobCancelled raised in its code, its
    process replaced if it does not end), as ``request.cancel()`` and the
    dashboard do: this waits up to --timeout seconds for its result and
    fails past it (the cancel stays asked).  It may finish first: the
    status printed says so.  A job running under a Celery worker is
    refused (stop it with Celery's revoke(id, terminate=True))."""
    running = False
    with db_engine.connect() as conn, conn.begin():
        try:
            records.cancel_waiting(conn, uuid, clock.utcnow())
        except JobStateError:
            records.cancel_running(conn, uuid, clock.utcnow())
            running = True
    if not running:
        click.echo(f"Cancelled {uuid}.")
        return
    click.echo(f"Job {uuid} is running: asked its worker to stop it...")
    try:
        result = records.wait_for(uuid, timeout)
    except TimeoutError:
        raise click.ClickException(
            f"Job {uuid} has not stopped within {timeout:g} s; the cancel stays asked and its worker stops it "
            "when it can. Look with `jobtable results --uuid " + uuid + "`."
        ) from None
    if result.status == tables.CANCELLED:
        click.echo(f"Cancelled {uuid} (stopped while running).")
    else:
        click.echo(f"Job {uuid} ended {result.status} before it could be stopped.")


_batch_size = click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Rows deleted per transaction (short transactions do not stall the workers).",
)


@main.command()
@click.option("--queue", "-q", default=None, help="Only this queue (default: all queues).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_batch_size
def purge(queue: str | None, yes: bool, batch_size: int | None) -> None:
    """Delete jobs that have not started (running jobs finish).

    Jobs enqueued while it runs are kept: it deletes those waiting when it
    started, a batch of ids per transaction (progress on a terminal)."""
    what = f"queue {queue!r}" if queue else "all queues"
    if not yes:
        click.confirm(f"Delete every pending and scheduled job of {what}?", abort=True)
    with db_engine.connect() as conn, conn.begin():
        plan = db_purge.plan_purge(conn, queue)
    deleted, after = 0, 0
    with progress(plan.total, "Deleting jobs") as advance:
        while True:
            with db_engine.connect() as conn, conn.begin():
                count, last = db_purge.purge_batch(conn, plan, queue, after, batch_size or db_purge.PURGE_BATCH)
            if last is None:
                break
            deleted, after = deleted + count, last
            advance(count)
    click.echo(f"Deleted {deleted} job(s) from {what}.")


@main.command()
@_batch_size
def clear(batch_size: int | None) -> None:
    """Delete results older than JOBTABLE_RESULTS_RETENTION seconds (progress on a terminal)."""
    retention = get_settings().results_retention
    before = clock.utcnow() - timedelta(seconds=retention)
    total = 0
    with db_engine.connect() as conn, conn.begin():
        expected = db_purge.count_results_before(conn, before)
    with progress(expected, "Deleting results") as advance:
        while True:
            # Small batches: short transactions that do not stall the workers.
            with db_engine.connect() as conn, conn.begin():
                deleted = operations_sql.clear_results(conn, before, batch_size or 1000)
            total += deleted
            advance(deleted)
            if not deleted:
                break
    click.echo(f"Deleted {total} result(s) older than {retention} seconds.")


@main.command("list")
@with_app
def list_jobs() -> None:
    """Registered jobs, with their descriptions, then the Celery-free (shim) tasks with their queues."""
    from ..registry import jobs_registry

    names = jobs_registry.names()
    tasks = _shim_tasks()
    if not names and not tasks:
        click.echo("No jobs registered. Put them in app/jobs.py, or pass --app or set JOBTABLE_APP / JOBTABLE_PACKAGES.")
        return
    for name in names:
        doc = (jobs_registry.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name}" + (f"  {doc[0]}" if doc else ""))
    if tasks:
        if names:
            click.echo("")
        click.echo("Tasks (jobtable.shim):")
        _table(["name", "queue", "description"], tasks)


def _shim_tasks() -> list[list[str]]:
    """The shim's tasks (name, queue, first line of the docstring), when the
    app uses it; Celery's built-in map tasks (``celery.map``...) are left
    out, as ``celery inspect registered`` leaves them out."""
    import sys

    if "jobtable.shim.task" not in sys.modules:
        return []
    from ..shim.maps import BUILTIN_NAMES
    from ..shim.registry import registry
    from ..shim.send import route
    from ..shim.task import Task

    rows = []
    for name, task in sorted(registry.tasks.items()):
        if not isinstance(task, Task) or name in BUILTIN_NAMES:
            continue
        try:
            queue = route(task._app(), name, task, (), {}, {})
        except Exception as exc:  # noqa: BLE001  (a router of the app's may need a message)
            queue = f"(decided per message: {type(exc).__name__})"
        doc = (type(task).__doc__ or "").strip().splitlines()
        rows.append([name, queue, doc[0] if doc else ""])
    return rows


@main.command("run")
@click.argument("name")
@click.option(
    "--args",
    "args_json",
    default="[]",
    help='Arguments as JSON: a list for positional ones (\'[1, "a"]\'), an object for keywords (\'{"user_id": 1}\').',
)
@with_app
def run_job(name: str, args_json: str) -> None:
    """Run one job inline, in this process, and print what it returns."""
    from ..execution import instantiate

    try:
        decoded = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", param_hint="--args") from None
    if isinstance(decoded, list):
        args, kwargs = decoded, {}
    elif isinstance(decoded, dict):
        args, kwargs = [], decoded
    else:
        raise click.BadParameter("give a JSON list or object", param_hint="--args")
    job = instantiate(name, args, kwargs)
    value = job.run()
    if value is not None:
        click.echo(value if isinstance(value, str) else json.dumps(value, default=str))
