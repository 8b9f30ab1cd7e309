"""``jobtable worker``: run the jobs in the queue."""

from __future__ import annotations

import dataclasses
import logging
import sys

import click

from ..middleware import JobContextFilter
from .group import discover_shim_tasks, main


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger("jobtable")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _shim_concurrency() -> int | None:
    """The shim app's ``worker_concurrency``, when neither --max-processes nor
    JOBTABLE_WORKER_MAX_PROCESSES says otherwise (Celery's setting, read)."""
    if "jobtable.shim.current" not in sys.modules:
        return None
    from ..settings import setting_source
    from ..shim.conf import check_concurrency
    from ..shim.current import current_or_none

    app = current_or_none()
    if app is None or setting_source("worker_max_processes").kind != "default":
        return None
    value = check_concurrency(app.conf.get("worker_concurrency"))
    if value is not None:
        logging.getLogger("jobtable.worker").info("Pool size %d: the app's worker_concurrency", value)
    return value


@main.command()
# plain.worker spells it `worker run`: the word is accepted and means nothing more.
@click.argument("action", required=False, type=click.Choice(["run"]), metavar="[run]")
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    help="Queue to consume (repeatable). Default: JOBTABLE_WORKER_QUEUES, else the queues the registered tasks route to.",
)
@click.option("--max-processes", type=int, default=None, help="Pool size (0: one per CPU). Default: JOBTABLE_WORKER_MAX_PROCESSES.")
@click.option("--max-jobs-per-process", type=int, default=None, help="Replace a pool member after this many jobs (0: never).")
@click.option("--max-pending-per-process", type=int, default=None, help="Most jobs a pool member claims at once.")
@click.option("--stats-every", type=float, default=None, help="Print queue depth, running jobs and jobs/s every S seconds (0: never).")
@click.option("--pool", type=click.Choice(["processes", "threads"]), default=None, help="processes (CPU-bound jobs) or threads (I/O-bound).")
@click.option("--burst", is_flag=True, help="Stop once no job is due (scheduled future jobs are left).")
@click.option("--reload", "reload_", is_flag=True, help="Restart when .py or .env files change (development).")
@click.option(
    "--celery-app",
    envvar="JOBTABLE_CELERY_APP",
    default=None,
    help="Also run the tasks of this Celery app (module:attribute) through Celery's tracer. Also JOBTABLE_CELERY_APP.",
)
@click.option(
    "--celery-beat/--no-celery-beat",
    default=True,
    show_default=True,
    help="With --celery-app: also schedule the app's beat_schedule (each slot once across all workers), "
    "instead of celery beat.",
)
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def worker(
    action: str | None,
    queues: tuple[str, ...],
    max_processes: int | None,
    max_jobs_per_process: int | None,
    max_pending_per_process: int | None,
    stats_every: float | None,
    pool: str | None,
    burst: bool,
    reload_: bool,
    celery_app: str | None,
    celery_beat: bool,
    log_level: str,
) -> None:
    """Run jobs from the queue table until stopped (SIGTERM/Ctrl-C: graceful).

    `jobtable worker run ...` (plain.worker's spelling) is the same command."""
    from ..discovery import load_app
    from ..settings import describe_sources, get_settings
    from .queues import choose_queues
    from ..worker.config import WorkerConfig

    # Logging first: reading the settings warns about unknown JOBTABLE_* variables.
    _setup_logging(log_level)
    load_app(click.get_current_context().find_root().obj.get("app"))
    # Before the pool forks and the scheduler reads its entries.
    discover_shim_tasks()
    logging.getLogger("jobtable.worker").info("%s", describe_sources())
    if max_processes is None:
        max_processes = _shim_concurrency()
    config = WorkerConfig.from_settings(
        queues=list(queues) or None,
        processes=max_processes,
        max_jobs_per_process=max_jobs_per_process,
        max_pending_per_process=max_pending_per_process,
        stats_every=stats_every,
        pool=pool,
        burst=burst or None,
    )
    if celery_app:
        # Loaded before the pool forks: members inherit the app and its tasks.
        from ..shim import celery_runner

        celery_runner.install(celery_app, pool=config.pool, concurrency=config.processes, beat=celery_beat)
    # After every app is loaded: the queues their tasks route to.
    chosen, how = choose_queues(queues, get_settings())
    if chosen is not None and chosen != config.queues:
        config = dataclasses.replace(config, queues=chosen)
        config.check()
    logging.getLogger("jobtable.worker").info("Consuming %s: %s", ", ".join(config.queues), how)
    if reload_:
        from ..worker.reload import run_with_reload

        argv = [arg for arg in sys.argv[1:] if arg != "--reload"]
        sys.exit(run_with_reload(argv, config.shutdown_grace))
    from ..worker.main import run_worker

    sys.exit(run_worker(config))
