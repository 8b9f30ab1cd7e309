"""Tasks: ``@shared_task`` / ``@app.task``, calling them, ``self.request``,
``self.retry()`` and ``autoretry_for``.

A task is registered under Celery's name for it (``module.function``, or
``name=``), so rows sent by Celery and by the shim are interchangeable.  Each
task also gets a ``Job`` subclass (``task.job_class``) whose ``job_name()`` is
that name: jobtable's scheduler enqueues beat entries through it, and the
native worker runs the task through it (see ``runner.py``).
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .. import messages, params, safetext
from ..jobs import Job
from .exceptions import MaxRetriesExceededError, NotRegistered, NotSupported, Retry
from .states import FAILURE, SUCCESS

if TYPE_CHECKING:
    from .app import Celery
    from .canvas import Signature
    from .result import AsyncResult, EagerResult



def _call_arguments(name: str, args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` of apply_async and apply, refused as Celery does
    when they are not a list/tuple and a dict: ``tuple("ab")`` would send
    the task two arguments 'a' and 'b'."""
    if args is not None and (isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple))):
        raise TypeError(f"{name}: args must be a list or tuple, got {type(args).__name__}.")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"{name}: kwargs must be a dict, got {type(kwargs).__name__}.")
    return tuple(args or ()), dict(kwargs or {})

class Context:
    """``self.request``: the call being executed."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    retries: int = 0
    is_eager: bool = False
    eta: str | None = None
    expires: str | None = None
    headers: dict[str, Any] | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: dict[str, Any] | None = None
    chain: list[dict[str, Any]] | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    delivery_info: dict[str, Any] = {}
    hostname: str | None = None
    origin: str | None = None
    shadow: str | None = None
    timelimit: tuple[Any, Any] = (None, None)
    called_directly: bool = True
    ignore_result: bool = False
    reply_to: str | None = None

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)
        self.correlation_id = self.id

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __repr__(self) -> str:
        return f"<Context: {self.__dict__!r}>"


class TaskRegistry:
    """Shim tasks by name (one registry per process, like Celery's shared tasks)."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}

    def register(self, task: Task) -> None:
        # Re-importing a module (reload, tests) replaces the task.
        self.tasks[task.name] = task

    def find(self, name: str) -> Task | None:
        task = self.tasks.get(name)
        if task is None:
            from .app import discover_all

            discover_all()
            task = self.tasks.get(name)
        return task

    def get(self, name: str) -> Task:
        task = self.find(name)
        if task is None:
            raise NotRegistered(
                f"No task named {name!r} in this process. Import the module that defines it (jobtable worker "
                "--app <module>, or app.autodiscover_tasks([...]))."
            )
        return task


registry = TaskRegistry()

#: Task options that raise NotSupported -> the alternative.
UNSUPPORTED_OPTIONS = {
    "rate_limit": "Limit concurrency with a concurrency key (concurrency_key=... on the task or in "
    "apply_async(headers={'concurrency_key': ...})), or run a dedicated queue with fewer worker processes.",
    "pydantic": "Validate arguments inside the task.",
    "reject_on_worker_lost": "A job whose worker dies is recorded LOST; give it retries to run it again.",
    "base_serializer": "Messages are JSON.",
}


def backoff_interval(factor: int, retries: int, maximum: int, full_jitter: bool) -> int:
    """Celery's ``get_exponential_backoff_interval``."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(countdown + 1)
    return int(max(0, countdown))


class Task:
    """Base class of tasks; ``@app.task(base=MyTask)`` subclasses it."""

    name: str = ""
    app: Celery | None = None
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | int = False
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    queue: str | None = None
    priority: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: float | datetime | None = None
    ignore_result: bool = False
    acks_late: bool = False
    track_started: bool = False
    serializer: str = "json"
    throws: tuple[type[BaseException], ...] = ()
    #: jobtable extension: a string, or a callable of the task's arguments
    #: returning one; at most one waiting-or-running task per (name, key).
    concurrency_key: str | Callable[..., str] | None = None
    #: The Job subclass that carries this task through jobtable (set per task).
    job_class: type[TaskJob]

    def __init__(self) -> None:
        self._requests = threading.local()

    # -- what the task does --------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"Task {self.name!r} has no run().")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the task runs it here and now, like a function."""
        self.push_request(Context(id=None, task=self.name, args=args, kwargs=kwargs, called_directly=True))
        try:
            return self.run(*args, **kwargs)
        finally:
            self.pop_request()

    def __repr__(self) -> str:
        return f"<@task: {self.name} (jobtable.shim)>"

    # -- self.request ------------------------------------------------------------------

    @property
    def request(self) -> Context:
        stack = getattr(self._requests, "stack", None)
        return stack[-1] if stack else Context()

    def push_request(self, request: Context | None = None, **fields: Any) -> None:
        stack = self._requests.__dict__.setdefault("stack", [])
        stack.append(request if request is not None else Context(**fields))

    def pop_request(self) -> None:
        self._requests.stack.pop()

    # -- handlers (override in a base class) -------------------------------------------

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        pass

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        pass

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        pass

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        pass

    # -- sending -----------------------------------------------------------------------

    def _app(self) -> Celery:
        from .app import current_app

        return self.app or current_app()

    def check_arguments(self, args: Any, kwargs: Any) -> None:
        """Celery's ``typing``: a call that does not fit the signature fails when sent."""
        if not self.typing:
            return
        try:
            signature = inspect.signature(self.run)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | EagerResult | None:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult | EagerResult | None:
        """Send the task.  Returns its AsyncResult (an EagerResult with
        ``task_always_eager``), or None when its concurrency key is taken."""
        from .send import check_options

        args, kwargs = _call_arguments(self.name, args, kwargs)
        self.check_arguments(args, kwargs)
        check_options(options)
        app = self._app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, link=options.get("link"))
        from .canvas import Signature

        sent: AsyncResult | None = Signature(
            self.name, args, kwargs, {**options, "task_id": task_id} if task_id else options, app=app
        ).apply_async()
        return sent

    def apply(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        retries: int = 0,
        throw: bool | None = None,
        link: Any = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task here and now (``task_always_eager``).  The arguments go
        through JSON as they would through the queue, so a task that cannot
        be sent fails in tests too.  ``retry()`` runs it again at once."""
        from .result import EagerResult

        args, kwargs = _call_arguments(self.name, args, kwargs)
        task_id = task_id or messages.new_task_id()
        encoded_args, encoded_kwargs = _encode(self.name, args, kwargs)
        args, kwargs = tuple(params.decode(encoded_args)), params.decode(encoded_kwargs)
        propagate = self._app().conf.task_eager_propagates if throw is None else throw
        while True:
            request = Context(
                id=task_id,
                task=self.name,
                args=args,
                kwargs=kwargs,
                retries=retries,
                is_eager=True,
                called_directly=False,
                root_id=options.get("root_id") or task_id,
                parent_id=options.get("parent_id"),
                delivery_info={"is_eager": True},
            )
            try:
                value = execute(self, request)
            except Retry as retry:
                _call_handler(self.on_retry, retry.exc or retry, task_id, args, kwargs, _ExceptionInfo(retry))
                retries += 1
                continue
            except Exception as exc:
                einfo = _ExceptionInfo(exc)
                _call_handler(self.on_failure, exc, task_id, args, kwargs, einfo)
                _call_handler(self.after_return, FAILURE, exc, task_id, args, kwargs, einfo)
                if propagate:
                    raise
                return EagerResult(task_id, exc, FAILURE, traceback=einfo.traceback, name=self.name)
            _call_handler(self.on_success, value, task_id, args, kwargs)
            _call_handler(self.after_return, SUCCESS, value, task_id, args, kwargs, None)
            for sig in link if isinstance(link, (list, tuple)) else [link] if link else []:
                sig.apply((value,), parent_id=task_id, root_id=request.root_id)
            return EagerResult(task_id, value, SUCCESS, name=self.name)

    # -- canvas ------------------------------------------------------------------------

    def signature(self, args: Any = None, kwargs: Any = None, *starargs: Any, **options: Any) -> Signature:
        from .canvas import Signature

        return Signature(self.name, args or (), kwargs or {}, options, app=self._app())

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs, immutable=True)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:  # noqa: N802  (Celery's name)
        from .result import AsyncResult

        return AsyncResult(task_id, app=self._app(), task_name=self.name, **kwargs)

    # -- retrying ----------------------------------------------------------------------

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Run this task again (same id, ``request.retries + 1``) after
        ``countdown`` seconds (default ``default_retry_delay``).  With no
        retries left, raises ``exc`` (or MaxRetriesExceededError).  Always
        raises: ``raise self.retry(...)`` reads as in Celery."""
        request = self.request
        if request.called_directly:
            if exc is not None:
                raise exc
            raise RuntimeError(f"Task {self.name} was called directly, not by a worker: it cannot be retried.")
        if (
            args is not None
            and tuple(args) != tuple(request.args)
            or kwargs is not None
            and dict(kwargs) != dict(request.kwargs)
        ):
            raise NotSupported(
                "retry(args=..., kwargs=...) with new arguments",
                "A retry runs the same message again. Send a new task instead: "
                "self.apply_async(new_args, countdown=...).",
            )
        if options:
            raise NotSupported(
                f"retry({', '.join(sorted(options))}=...)",
                "A retry keeps the message's queue and priority. Supported: countdown, eta, max_retries, exc.",
            )
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}",
                task_args=request.args,
                task_kwargs=request.kwargs,
            )
        if countdown is None:
            if eta is not None:
                eta = eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)
                countdown = max(0.0, (eta - datetime.now(timezone.utc)).total_seconds())
            else:
                countdown = self.default_retry_delay
        raise Retry(countdown=timedelta(seconds=max(0.0, float(countdown))), exc=exc)

    # -- not supported -------------------------------------------------------------------

    def map(self, it: Any) -> Any:
        raise NotSupported("task.map()", "Send one task per item with group(task.s(x) for x in items).")

    def starmap(self, it: Any) -> Any:
        raise NotSupported("task.starmap()", "Send one task per item with group(task.s(*args) for args in items).")

    def chunks(self, it: Any, n: int) -> Any:
        raise NotSupported("task.chunks()", "Split the items yourself and send one task per chunk (a group).")

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        raise NotSupported(
            "update_state() (custom states, progress)",
            "Store progress in your own table or cache; AsyncResult reports "
            "PENDING/STARTED/RETRY/SUCCESS/FAILURE/REVOKED.",
        )

    def replace(self, sig: Any) -> Any:
        raise NotSupported("Task.replace()", "Return a value and chain the next task: chain(a.s(), b.s()).")

    def add_to_chord(self, sig: Any, lazy: bool = False) -> Any:
        raise NotSupported("Task.add_to_chord()", "Build the whole chord before sending it.")

    def send_event(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupported("task events", "Use logging, or jobtable's OpenTelemetry instrumentation.")


class TaskJob(Job):
    """The Job that carries a shim task: ``job_name()`` is the task's name.

    Not in jobtable's job registry on purpose: the worker would then build it
    from the message's arguments alone, and the task needs the message's
    headers (id, retries, group, chain) -- the runner builds it instead.
    """

    task: Task
    #: Set by the runner: the message being executed.
    _call: messages.TaskCall | None = None
    #: Set by the runner: the message's canvas steps (callbacks, chain, chord).
    _embed: dict[str, Any] = {}
    #: Set for beat entries: their ``options`` (queue, priority).
    _entry_options: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    @classmethod
    def job_name(cls) -> str:
        return cls.task.name

    def default_queue(self) -> str:
        from .send import route

        app = self.task._app()
        return route(app, self.task.name, self.task, self.args, self.kwargs, self._entry_options)

    def default_priority(self) -> int:
        priority = self._entry_options.get("priority", self.task.priority)
        if priority is None:
            priority = self.task._app().conf.task_default_priority or 0
        return int(priority)

    def default_concurrency_key(self) -> str:
        key = self.task.concurrency_key
        if callable(key):
            return str(key(*self.args, **self.kwargs))
        return key or ""

    def run(self) -> Any:
        from .runner import run_task

        return run_task(self)


def _encode(name: str, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    from .send import encode_args

    return encode_args(args, kwargs, name)


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
        import logging

        logging.getLogger("jobtable.shim").exception("Task handler %s failed", getattr(handler, "__name__", handler))


def execute(task: Task, request: Context) -> Any:
    """Run the task with ``request`` as ``self.request``; ``autoretry_for``
    exceptions become ``self.retry()`` (Celery's rules)."""
    task.push_request(request)
    try:
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
    finally:
        task.pop_request()


_TASK_ATTRIBUTES = set(vars(Task)) | {"bind", "base", "name", "shared", "lazy", "filter", "trail"}


def task_name(fun: Callable[..., Any], app: Celery | None) -> str:
    """Celery's name: ``module.function`` (``app.main`` for ``__main__``)."""
    module = fun.__module__
    if module == "__main__" and app is not None and app.main:
        module = app.main
    return f"{module}.{fun.__name__}"


def create_task(fun: Callable[..., Any], *, app: Celery | None, base: type[Task] | None = None, **options: Any) -> Task:
    """The task object for ``fun`` (what ``@app.task(...)`` returns)."""
    for key in options:
        if key in UNSUPPORTED_OPTIONS and options[key] is not None:
            raise NotSupported(f"the task option {key}=", UNSUPPORTED_OPTIONS[key])
    serializer = options.get("serializer")
    if serializer not in (None, "json"):
        raise NotSupported(f"serializer={serializer!r}", "Messages are stored as JSON: use 'json'.")
    base = options.pop("base", None) or base or Task
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise TypeError(f"base={base!r} must be a subclass of jobtable.shim.Task.")
    bind = bool(options.pop("bind", False))
    for ignored in ("shared", "lazy", "filter", "trail"):
        options.pop(ignored, None)
    if app is None:
        from .app import _current

        app_for_name = _current
    else:
        app_for_name = app
    name = options.pop("name", None) or task_name(fun, app_for_name)
    attributes: dict[str, Any] = {
        "name": name,
        "app": app,
        "run": fun if bind else staticmethod(fun),
        "__module__": fun.__module__,
        "__doc__": fun.__doc__,
        "__wrapped__": fun,
        "__qualname__": fun.__name__,
    }
    for key in ("autoretry_for", "dont_autoretry_for", "throws"):
        if key in options and options[key] is not None:
            options[key] = tuple(options[key])
    attributes.update(options)
    task_class = type(fun.__name__, (base,), attributes)
    task: Task = task_class()
    module, _, short = name.rpartition(".")
    task.job_class = type(
        f"{short}_job", (TaskJob,), {"task": task, "__module__": module or fun.__module__, "__qualname__": short}
    )
    registry.register(task)
    return task


def shared_task(*args: Any, **options: Any) -> Any:
    """``@shared_task`` / ``@shared_task(bind=True, ...)``: a task of the current app."""

    def decorate(fun: Callable[..., Any]) -> Task:
        return create_task(fun, app=None, **options)

    if args and callable(args[0]) and len(args) == 1 and not options:
        return decorate(args[0])
    return decorate
