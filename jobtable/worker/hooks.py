"""Points of the worker's life that other layers hook into (the shim sends
Celery's ``worker_ready``, ``worker_process_init`` and ``worker_shutdown``
from them; with --celery-app, Celery's own signals and
``worker_process_shutdown`` too).  Each hook is called with the worker's hostname; what a hook
raises is logged and never stops the worker."""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger("jobtable.worker")

Hook = Callable[[str], None]

#: The supervisor started its pool members and is taking jobs.
WORKER_READY: list[Hook] = []
#: A forked pool member is about to take jobs (not the threads pool: no process starts).
MEMBER_STARTED: list[Hook] = []
#: A forked pool member has stopped taking jobs and is about to exit (not the threads pool).
MEMBER_STOPPING: list[Hook] = []
#: The supervisor's members have stopped; it is about to exit.
WORKER_STOPPED: list[Hook] = []


def fire(hooks: list[Hook], hostname: str) -> None:
    for hook in list(hooks):
        try:
            hook(hostname)
        except Exception:
            logger.exception("Worker hook %s failed", getattr(hook, "__qualname__", hook))
