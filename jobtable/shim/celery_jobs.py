"""Run jobtable Jobs under a real Celery worker.

A Job enqueued with ``run_in_worker`` is a Celery protocol v2 message named
after the Job's registered name.  ``register_jobs(app)`` registers one Celery
task per registered Job under that name; the task rebuilds the Job from the
message's arguments (``jobtable.execution.instantiate``: parameter markers,
ORM references) and runs it as the native worker does.  Import the modules
that define your Jobs before calling it (e.g. in the Celery app module)::

    app = Celery("proj", broker="jobtable+postgresql+psycopg://...")
    import myproject.jobs
    from jobtable.shim.celery_jobs import register_jobs
    register_jobs(app)

What the task does for a Job, as the native worker does:

- ``run()`` inside ``JOBTABLE_MIDDLEWARE`` (``current_job()`` gives the
  attempt, its retry budget, the queue and the concurrency key);
- a failure with retries left is retried through Celery's ``self.retry()``:
  ``countdown`` is ``calculate_retry_delay(attempt)``, ``max_retries`` the
  Job's retries (the message's, ``run_in_worker(retries=)`` included), and
  the next attempt sees ``attempt + 1``;
- ``DeferJob(delay=)`` is retried the same way after ``delay``, without
  using up a retry (unless ``increment_retries=True``); with the jobtable
  result backend its attempt is recorded DEFERRED, as on the native worker;
- a retry of a Job with a concurrency key takes over the key from the
  attempt that asked for it (the jobtable broker hands it over in one
  transaction, ``db/enqueue_sql.hand_over_held_attempts``);
- Job schedules fire: the worker's main process runs jobtable's scheduler
  (``celery_job_schedules.py``), once per slot across every worker.

A Job's ``rate_limit`` becomes the Celery task's: Celery enforces it in
each worker (a token bucket per worker), not across workers as the native
worker does.

What it does not do: ``default_timeout()`` (Celery's ``time_limit`` applies)
and jobtable's cancel marks (``request.cancel()`` of a Job a Celery worker
runs raises ``JobStateError``: use ``app.control.revoke(id, terminate=True)``).

Registration is lazy (when the app finalizes), so ``app.Task = CustomTask``
set after this call still applies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.exceptions import Ignore, Reject, Retry

from .. import messages
from ..execution import instantiate
from ..jobbase import BaseJob
from ..jobs import DeferJob
from ..middleware import JobRun, RunJob, build_chain
from ..registry import jobs_registry

logger = logging.getLogger("jobtable.celery")

#: The JOBTABLE_MIDDLEWARE chain of this process (built at its first Job).
_chain: RunJob | None = None

#: Celery's own control-flow exceptions pass through untouched.
_CELERY_FLOW = (Retry, Ignore, Reject)


def _middleware() -> RunJob:
    global _chain
    if _chain is None:
        from ..settings import get_settings

        _chain = build_chain(get_settings().middleware)
    return _chain


def _budget(headers: dict[str, Any], job: BaseJob) -> int:
    """The retry budget the message carries (``run_in_worker`` writes it);
    a message sent without it (Celery's ``send_task`` by the Job's name)
    gets the Job's ``default_retries()``."""
    value = headers.get(messages.RETRIES_HEADER)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return int(job.resolved_retries())


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _delay(compute: Callable[[], Any], what: str, name: str) -> float:
    """Seconds to wait before the next attempt, as the native worker reads
    them: a number or timedelta, negative meaning now; one that raises, is
    not a number, or is not finite or too far away is logged and means now."""
    try:
        value = compute()
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"{seconds!r} is not a finite number of seconds")
        seconds = max(0.0, seconds)
        datetime.now(timezone.utc) + timedelta(seconds=seconds)  # OverflowError past year 9999
        return seconds
    except Exception:
        logger.exception("%s of %s failed; retrying at once", what, name)
        return 0.0


def run_job(task: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One attempt of Job ``name`` inside Celery task ``task`` (bound)."""
    request = task.request
    headers: dict[str, Any] = dict(request.headers or {})
    attempt = int(request.retries or 0) + 1
    job = instantiate(name, list(args), dict(kwargs))
    retries = _budget(headers, job)
    delivery = request.delivery_info or {}
    job_run = JobRun(
        job=job,
        job_name=name,
        uuid=str(request.id or ""),
        attempt=attempt,
        retries=retries,
        queue=str(delivery.get("routing_key") or ""),
        priority=_int(delivery.get("priority")),
        concurrency_key=str(headers.get(messages.CONCURRENCY_KEY_HEADER) or ""),
        worker_id=str(request.hostname or ""),
    )
    try:
        return _middleware()(job_run)
    except _CELERY_FLOW:
        raise
    except DeferJob as defer:
        if defer.increment_retries and attempt > retries:
            logger.warning("%s deferred with no retries left: recorded as a failure", job_run)
            raise
        budget = retries if defer.increment_retries else retries + 1
        seconds = _delay(lambda: defer.delay, "DeferJob(delay=)", name)
        logger.info("%s deferred for %gs", job_run, seconds)
        raise task.retry(
            exc=defer, countdown=seconds, max_retries=budget, headers={**headers, messages.RETRIES_HEADER: budget}
        ) from None
    except Exception as exc:
        if attempt > retries:
            raise
        seconds = _delay(lambda: job.resolved_retry_delay(attempt), "calculate_retry_delay", name)
        raise task.retry(
            exc=exc, countdown=seconds, max_retries=retries, headers={**headers, messages.RETRIES_HEADER: retries}
        ) from None


def _runner(name: str) -> Callable[..., Any]:
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        return run_job(self, name, args, kwargs)

    run.__name__ = run.__qualname__ = name.rsplit(".", 1)[-1]
    run.__doc__ = f"Runs the jobtable Job {name!r}."
    return run


def register_jobs(
    app: Any, names: Iterable[str] | None = None, *, schedules: bool = True, **task_options: Any
) -> list[str]:
    """Register Celery tasks for the given (default: all registered) Jobs.

    Lazily, as Celery's own ``@app.task``: an app not finalized yet is not
    finalized here (that would build its tasks before ``app.Task =
    CustomTask`` runs, and the app-wide base class -- its ``on_failure``
    -- would silently not apply); the tasks are made when the app finalizes
    (``app.on_after_finalize``), with the app's ``Task`` of that moment.
    Names already taken by a Celery task then are left alone.  Returns the
    names to register (unknown ones raise ``UnknownJob`` now).
    ``task_options`` go to ``app.task`` (e.g. ``acks_late=True``).

    ``schedules``: the Celery worker of this app runs jobtable's scheduler
    (Job ``schedule`` attributes and ``JOBTABLE_SCHEDULE``), as a native
    worker does; False leaves schedules to a ``jobtable worker`` (a warning
    at the worker's start names them if there are any).
    """
    if not isinstance(schedules, bool):
        raise TypeError(f"register_jobs(schedules={schedules!r}): give True or False.")
    if "bind" in task_options:
        raise TypeError(
            "register_jobs(bind=...): the tasks are always bound (they retry through self.retry); leave bind out."
        )
    wanted = sorted(names if names is not None else jobs_registry.names())
    for name in wanted:
        jobs_registry.get(name)  # UnknownJob with a clear message, at the call
    from . import celery_job_schedules

    celery_job_schedules.watch(app, run=schedules)
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
        options = dict(task_options)
        rate = getattr(jobs_registry.get(name), "rate_limit", None)
        if rate is not None and "rate_limit" not in options:
            # Celery's own limit, per Celery worker (the native worker's is
            # the database's, across every worker).
            options["rate_limit"] = rate
        app.task(name=name, shared=False, bind=True, **options)(_runner(name))
        registered.append(name)
    return registered
