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

Registration is lazy (when the app finalizes), so ``app.Task = CustomTask``
set after this call still applies.  Retries (``default_retries``,
``calculate_retry_delay``), ``DeferJob``, timeouts and schedules of the
native worker do not apply here yet (issue 15): the Celery worker runs the
Job once per delivery, with Celery's own settings.
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

    Lazily, as Celery's own ``@app.task``: an app not finalized yet is not
    finalized here (that would build its tasks before ``app.Task =
    CustomTask`` runs, and the app-wide base class -- its ``on_failure``
    -- would silently not apply); the tasks are made when the app finalizes
    (``app.on_after_finalize``), with the app's ``Task`` of that moment.
    Names already taken by a Celery task then are left alone.  Returns the
    names to register (unknown ones raise ``UnknownJob`` now).
    ``task_options`` go to ``app.task`` (e.g. ``acks_late=True``).
    """
    wanted = sorted(names if names is not None else jobs_registry.names())
    for name in wanted:
        jobs_registry.get(name)  # UnknownJob with a clear message, at the call
    if app.finalized:
        return _register(app, wanted, task_options)

    def on_finalize(sender: Any = None, **_: Any) -> None:
        _register(app, wanted, task_options)

    # weak=False: the closure has no other reference.
    app.on_after_finalize.connect(on_finalize, weak=False)
    return wanted


def _register(app: Any, names: list[str], task_options: dict[str, Any]) -> list[str]:
    registered = []
    for name in names:
        if name in app.tasks:
            continue
        # shared=False: the task belongs to this app only, not to every app
        # created later in the process.
        app.task(name=name, shared=False, **task_options)(_runner(name))
        registered.append(name)
    return registered
