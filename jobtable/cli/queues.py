"""Which queues ``jobtable worker`` consumes when none is named.

A worker started without ``--queue`` (and without JOBTABLE_WORKER_QUEUES)
used to consume ``default`` only, while Celery-shim tasks wait in
``celery`` (Celery's default queue) or wherever ``task_routes`` sends them:
the worker sat idle without a word.  Now the default is the queues the
loaded app's registered tasks route to, and a worker told its queues warns
about registered tasks routed elsewhere.

Only what can be known without a message is used: a Job's
``default_queue()`` called on a bare instance, a shim task's route (or a
``--celery-app`` task's, by Celery's router) for empty arguments, a schedule
entry's job.  A router or ``default_queue()`` that
needs real arguments (or raises) is left out, and logged at debug level.
"""

from __future__ import annotations

import logging
import sys

from ..jobbase import BaseJob
from ..settings import Settings, setting_source

logger = logging.getLogger("jobtable.worker")

#: The Job API's queue when a Job does not choose one (Job.default_queue).
JOB_DEFAULT_QUEUE = "default"


def _job_queue(job_class: type[BaseJob]) -> str | None:
    if job_class.default_queue is BaseJob.default_queue:
        return JOB_DEFAULT_QUEUE
    try:
        # Most overrides return a constant; an instance without __init__ is
        # enough to ask.  One that reads its arguments cannot be known here.
        return str(job_class.default_queue(job_class.__new__(job_class)))
    except Exception as exc:  # noqa: BLE001  (user code: any error means "unknown")
        logger.debug("Queue of %s unknown before a message: %s", job_class.__qualname__, exc)
        return None


def _shim_routes() -> dict[str, str]:
    # Only when the app imported the shim: a plain Job app does not pay for it.
    if "jobtable.shim.task" not in sys.modules:
        return {}
    from ..shim.maps import BUILTIN_NAMES
    from ..shim.registry import registry
    from ..shim.send import route
    from ..shim.task import Task

    routes: dict[str, str] = {}
    for name, task in list(registry.tasks.items()):
        if not isinstance(task, Task):  # the registry knows tasks by protocol only
            continue
        if name in BUILTIN_NAMES:
            # celery.map & co. are sent to the queue of the task they map,
            # not to their own: they name no queue a worker must consume.
            continue
        try:
            routes[name] = route(task._app(), name, task, (), {}, {})
        except Exception as exc:  # noqa: BLE001  (a router of the user's: unknown)
            logger.debug("Queue of task %s unknown before a message: %s", name, exc)
    # A Celery worker without -Q consumes every queue of task_queues.
    from ..shim.conf import queue_names
    from ..shim.current import current_or_none

    app = current_or_none()
    if app is not None:
        for queue in queue_names(app.conf.get("task_queues")):
            routes[f"task_queues {queue}"] = queue
    return routes


def _celery_routes() -> dict[str, str]:
    """The tasks of the Celery app loaded with --celery-app, routed by
    Celery's own router (task_routes, task_default_queue, the task's queue)."""
    if "jobtable.shim.celery_runner" not in sys.modules:
        return {}
    from ..shim import celery_runner

    app = getattr(celery_runner, "_app", None)  # set by celery_runner.install()
    if app is None:
        return {}
    routes: dict[str, str] = {}
    for name in list(app.tasks):
        if name.startswith("celery."):  # Celery's built-in tasks (chord_unlock, backend_cleanup...)
            continue
        try:
            queue = app.amqp.router.route({}, name, (), {})["queue"]
            routes[name] = str(getattr(queue, "name", queue))
        except Exception as exc:  # noqa: BLE001  (a router of the user's: unknown)
            logger.debug("Queue of Celery task %s unknown before a message: %s", name, exc)
    return routes


def _schedule_routes() -> dict[str, str]:
    from ..scheduling import schedule_entries

    try:
        entries = schedule_entries()
    except Exception:  # noqa: BLE001  (the worker itself reports a bad entry, naming it)
        return {}
    routes: dict[str, str] = {}
    for entry in entries:
        try:
            routes[f"schedule {entry.label}"] = str(entry.job.default_queue())
        except Exception as exc:  # noqa: BLE001
            logger.debug("Queue of schedule entry %s unknown: %s", entry.label, exc)
    return routes


def task_routes() -> dict[str, str]:
    """Registered task or job name -> the queue its messages go to, when
    knowable.  jobtable's own jobs (``cmd:`` entries, chores) are counted only
    through the schedule entries that enqueue them."""
    from ..registry import jobs_registry

    routes: dict[str, str] = {}
    for name in jobs_registry.names():
        job_class = jobs_registry.get(name)
        if job_class.__module__.split(".")[0] == "jobtable":
            continue
        queue = _job_queue(job_class)
        if queue is not None:
            routes[name] = queue
    routes.update(_shim_routes())
    routes.update(_celery_routes())
    routes.update(_schedule_routes())
    return routes


def choose_queues(flag_queues: tuple[str, ...], settings: Settings) -> tuple[list[str] | None, str]:
    """The queues to pass to WorkerConfig (None: the setting's) and how they
    were chosen, for the start-up log.  Warns once per unconsumed queue."""
    routes = task_routes()
    if flag_queues:
        chosen, how = list(flag_queues), "--queue"
    elif setting_source("worker_queues").kind != "default":
        chosen, how = list(settings.worker_queues), "JOBTABLE_WORKER_QUEUES"
    else:
        routed = sorted(set(routes.values()))
        if not routed:
            return None, "the default queue (no registered task names another)"
        return routed, "the queues of the registered tasks (--queue to choose)"
    _warn_unconsumed(routes, chosen, how)
    return chosen, how


def _warn_unconsumed(routes: dict[str, str], consumed: list[str], how: str) -> None:
    by_queue: dict[str, list[str]] = {}
    for name, queue in sorted(routes.items()):
        if queue not in consumed:
            by_queue.setdefault(queue, []).append(name)
    for queue, names in sorted(by_queue.items()):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        logger.warning(
            "Registered %s routed to queue %r, which this worker does not consume (%s %s): %s. "
            "Add --queue %s, or start another worker for it.",
            "task" if len(names) == 1 else f"{len(names)} tasks",
            queue,
            how,
            " ".join(consumed),
            shown,
            queue,
        )
