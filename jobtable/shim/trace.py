"""Running a task as Celery's tracer does (``celery/app/trace.py``): the
signals, the handlers and ``autoretry_for`` around ``task.run``, for the
native worker (``TaskJob.run``) and eager runs (``Task.apply``)."""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from .. import safetext
from ..worker.errors import JobCancelled
from . import signals
from .context import Context
from .exceptions import Ignore, Retry
from .states import FAILURE, IGNORED, RETRY, REVOKED, SUCCESS

logger = logging.getLogger("jobtable.shim")


class TracedTask(Protocol):
    """What the tracer uses of a task (``task.Task`` has it all): the
    request stack, ``run``, the handlers and the ``autoretry_for`` options."""

    @property
    def autoretry_for(self) -> tuple[type[BaseException], ...]: ...
    @property
    def dont_autoretry_for(self) -> tuple[type[BaseException], ...]: ...
    @property
    def retry_kwargs(self) -> dict[str, Any]: ...
    @property
    def retry_backoff(self) -> bool | int: ...
    @property
    def retry_backoff_max(self) -> int: ...
    @property
    def retry_jitter(self) -> bool: ...

    def run(self, *args: Any, **kwargs: Any) -> Any: ...
    def push_request(self, request: Context | None = None, **fields: Any) -> None: ...
    def pop_request(self) -> None: ...
    def retry(self, *, exc: BaseException | None = None, **options: Any) -> Any: ...
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None: ...
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None: ...
    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None: ...
    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None: ...


def backoff_interval(factor: int, retries: int, maximum: int, full_jitter: bool) -> int:
    """Celery's ``get_exponential_backoff_interval``."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(countdown + 1)
    return int(max(0, countdown))


class _ExceptionInfo:
    """The ``einfo`` handlers get: the exception and its formatted traceback."""

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc
        self.type = type(exc)
        # Never raises (a hostile exception would otherwise replace the
        # task's own error with the formatter's).
        self.traceback = safetext.format_traceback(exc)

    def __str__(self) -> str:
        return self.traceback


def _call_handler(handler: Callable[..., Any], *args: Any) -> None:
    # A broken handler must not change how the attempt is recorded.
    try:
        handler(*args)
    except Exception:
        logger.exception("Task handler %s failed", getattr(handler, "__name__", handler))


def traced(task: TracedTask, request: Context, after: Callable[[Any], Any] | None = None) -> Any:
    """Run the task as Celery's tracer does (app/trace.py): ``task_prerun``;
    the task; then ``on_retry`` + ``task_retry``, ``on_failure`` +
    ``task_failure`` or ``on_success`` + ``task_success``; ``after_return``;
    ``task_postrun``.  Returns the value, or ``(value, after(value))`` when
    ``after`` is given (it runs before success is declared: what it raises
    fails the task).  Handlers and signal receivers that raise are logged.

    ``request`` is ``self.request`` from ``task_prerun`` to ``task_postrun``,
    as in Celery: handlers read ``self.request.id``, and receivers
    ``sender.request.is_eager`` (the Django fix-up does)."""
    task.push_request(request)
    try:
        return _traced(task, request, after)
    finally:
        task.pop_request()


def _traced(task: TracedTask, request: Context, after: Callable[[Any], Any] | None) -> Any:
    task_id, args, kwargs = request.id, request.args, request.kwargs
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    state: str = FAILURE
    retval: Any = None
    einfo: _ExceptionInfo | None = None
    started = time.monotonic()
    try:
        value = execute(task, request)
        extra = after(value) if after is not None else None
    except Ignore:
        # replace(): as Celery's tracer, no success or failure handler; the
        # postrun says IGNORED.
        state = IGNORED
        raise
    except JobCancelled:
        # Terminated (revoke(terminate=True), a cancel): as in Celery, whose
        # pool kills the process, no failure handler runs; task_revoked is
        # sent.  Celery's default signal is SIGTERM; the one passed to
        # revoke() is not recorded.
        state = REVOKED
        signals.task_revoked.send(
            sender=task, request=request, terminated=True, signum=int(signal.SIGTERM), expired=False
        )
        raise
    except Retry as retry:
        state, retval, einfo = RETRY, retry, _ExceptionInfo(retry)
        _call_handler(task.on_retry, retry.exc or retry, task_id, args, kwargs, einfo)
        signals.task_retry.send(sender=task, request=request, reason=retry, einfo=einfo)
        raise
    except BaseException as exc:
        retval, einfo = exc, _ExceptionInfo(exc)
        _call_handler(task.on_failure, exc, task_id, args, kwargs, einfo)
        signals.task_failure.send(
            sender=task,
            task_id=task_id,
            exception=exc,
            args=args,
            kwargs=kwargs,
            traceback=exc.__traceback__,
            einfo=einfo,
        )
        raise
    else:
        state, retval = SUCCESS, value
        _call_handler(task.on_success, value, task_id, args, kwargs)
        signals.task_success.send(sender=task, result=value, runtime=time.monotonic() - started)
        return (value, extra) if after is not None else value
    finally:
        # Celery calls after_return for every state, RETRY included -- but a
        # terminated task's process is killed: neither runs.
        if state == IGNORED:
            signals.task_postrun.send(
                sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs, retval=None, state=state
            )
        elif state != REVOKED:
            _call_handler(task.after_return, state, retval, task_id, args, kwargs, einfo)
            signals.task_postrun.send(
                sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs, retval=retval, state=state
            )


def execute(task: TracedTask, request: Context) -> Any:
    """Run the task (``request`` is ``self.request``, pushed by ``traced``);
    ``autoretry_for`` exceptions become ``self.retry()`` (Celery's rules)."""
    try:
        return task.run(*request.args, **request.kwargs)
    except Retry:
        raise
    except Exception as exc:
        if (
            task.autoretry_for
            and isinstance(exc, tuple(task.autoretry_for))
            and not (task.dont_autoretry_for and isinstance(exc, tuple(task.dont_autoretry_for)))
        ):
            retry_kwargs = dict(task.retry_kwargs or {})
            if task.retry_backoff:
                retry_kwargs["countdown"] = backoff_interval(
                    int(max(1.0, float(task.retry_backoff))),
                    request.retries,
                    task.retry_backoff_max,
                    bool(task.retry_jitter),
                )
            task.retry(exc=exc, **retry_kwargs)
        raise
