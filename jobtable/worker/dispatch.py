"""From a decoded task message to the callable that runs it.

Registered Jobs run through ``jobtable.execution.instantiate``.  Other task
names (Celery tasks, later the shim) go through ``RUNNERS``: functions that
return a ``Prepared`` for a call they know, or None.  Nothing claims them yet,
so they end ERRORED as unknown jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..exceptions import UnknownJob
from ..execution import instantiate
from ..messages import TaskCall
from ..registry import jobs_registry


@dataclass
class Prepared:
    """A task ready to run: the object middleware sees and its timeout."""

    job: Any  # a Job, or any object with run()
    timeout: float | None = None  # None: the configured default
    retry_delay: Callable[[int], Any] | None = None  # seconds after failed attempt n


#: Extra runners, tried in order for task names that are not registered Jobs.
RUNNERS: list[Callable[[TaskCall], Prepared | None]] = []

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
