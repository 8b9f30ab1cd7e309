"""From a decoded task message to the callable that runs it.

Registered Jobs run through ``jobtable.execution.instantiate``.  Other task
names (Celery tasks, later the shim) go through ``RUNNERS``: functions that
return a ``Prepared`` for a call they know, or None.  Nothing claims them yet,
so they end ERRORED as unknown jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..exceptions import UnknownJob
from ..execution import instantiate
from ..messages import TaskCall
from ..registry import jobs_registry

logger = logging.getLogger("jobtable.worker")


@dataclass
class Prepared:
    """A task ready to run: the object middleware sees and its timeout."""

    job: Any  # a Job, or any object with run()
    timeout: float | None = None  # None: the configured default
    retry_delay: Callable[[int], Any] | None = None  # seconds after failed attempt n


#: Extra runners, tried in order for task names that are not registered Jobs.
RUNNERS: list[Callable[[TaskCall], Prepared | None]] = []

#: Task ids of claimed rows past their expiry handed to their runner instead
#: of ended by the worker (a runner that records revoked tasks itself,
#: ``revokes_sql.runner_revokes``): it records them REVOKED and sends
#: ``task_revoked`` with ``expired=True``, as a Celery worker does with an
#: expired task it receives; it never runs them.
expired: set[str] = set()

#: Says whether a running row whose process died is run again once (Celery's
#: ``acks_late`` + ``reject_on_worker_lost``): the runners' answers for
#: their tasks (rescue.py asks; any True wins, a raising one is a no).
REQUEUE_ON_LOST: list[Callable[[Any], bool]] = []


#: Rate limits of the runners' tasks: task name -> tokens per second, or
#: None (not theirs, or no limit).  Tried in order after registered Jobs;
#: the first number wins.  Read by the member before it starts a row
#: (process.py): a row without a token waits (db/ratelimit_sql.py).
RATE_LIMITS: list[Callable[[str], float | None]] = []


def rate_of(task_name: str) -> float | None:
    """Tokens per second allowed to ``task_name`` across all workers; None: no limit."""
    if task_name in jobs_registry:
        return jobs_registry.rate_of(task_name)
    for hook in list(RATE_LIMITS):
        try:
            rate = hook(task_name)
        except Exception:  # noqa: BLE001  (checked where declared; never stop the member)
            logger.exception("The rate_limit of %r cannot be read; running it without a limit.", task_name)
            continue
        if rate:
            return rate
    return None


def requeues_on_lost(row: Any) -> bool:
    for hook in list(REQUEUE_ON_LOST):
        try:
            if hook(row):
                return True
        except Exception:  # noqa: BLE001  (a task's options read wrongly: the default, no requeue)
            continue
    return False


#: The claimed row being prepared, while ``prepare`` runs: for runners that
#: need more of the stored message than the TaskCall carries (the body's
#: embed -- callbacks, chain, chord -- and the properties), e.g. Celery's tracer.
current_row: ContextVar[Any] = ContextVar("jobtable_current_row", default=None)


def prepare(call: TaskCall) -> Prepared:
    """The runnable form of ``call``; UnknownJob when nobody knows its name."""
    if call.task_name in jobs_registry:
        job = instantiate(call.task_name, call.args, call.kwargs)
        timeout = job.default_timeout()  # None: JOBTABLE_TIMEOUT
        return Prepared(
            job=job,
            timeout=float(timeout) if timeout is not None else None,
            retry_delay=job.resolved_retry_delay,
        )
    for runner in RUNNERS:
        prepared = runner(call)
        if prepared is not None:
            return prepared
    # Raises UnknownJob with the registry's how-to-register message.
    jobs_registry.get(call.task_name)
    raise UnknownJob(call.task_name)  # pragma: no cover
