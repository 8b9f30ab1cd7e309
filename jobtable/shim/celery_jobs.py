"""Run jobtable Jobs under a real Celery worker.

A Job enqueued with ``run_in_worker`` is a Celery protocol v2 message named
after the Job's registered name.  ``register_jobs(app)`` registers one Celery
task per registered Job under that name; the task rebuilds the Job from the
message's arguments (``jobtable.execution.instantiate``: parameter markers,
ORM references) and calls ``run()``.  Import the modules that define your
Jobs before calling it (e.g. in the Celery app module)::

    app = Celery("proj", broker="jobtable+postgresql+psycopg://...")
    import myproject.jobs
    from jobtable.shim.celery_jobs import register_jobs
    register_jobs(app)

Retries, timeouts and results of the native worker do not apply here: the
Celery worker runs the Job once per delivery, with Celery's own settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..execution import instantiate
from ..registry import jobs_registry


def _runner(name: str) -> Callable[..., Any]:
    def run_job(*args: Any, **kwargs: Any) -> Any:
        return instantiate(name, list(args), dict(kwargs)).run()

    run_job.__name__ = run_job.__qualname__ = name.rsplit(".", 1)[-1]
    run_job.__doc__ = f"Runs the jobtable Job {name!r}."
    return run_job


def register_jobs(app: Any, names: Iterable[str] | None = None, **task_options: Any) -> list[str]:
    """Register Celery tasks for the given (default: all registered) Jobs.

    Names already taken by a Celery task are left alone.  Returns the names
    registered.  ``task_options`` go to ``app.task`` (e.g. ``acks_late=True``).
    """
    registered = []
    for name in sorted(names if names is not None else jobs_registry.names()):
        jobs_registry.get(name)  # UnknownJob with a clear message
        if name in app.tasks:
            continue
        # shared=False: the task belongs to this app only, not to every app
        # created later in the process.
        app.task(name=name, shared=False, **task_options)(_runner(name))
        registered.append(name)
    return registered
