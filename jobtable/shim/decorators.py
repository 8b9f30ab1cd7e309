"""``@app.task`` and ``@shared_task``: a function made a registered ``Task``.

Each call makes a ``Task`` subclass whose ``run`` is the function, under
Celery's name for it, with its ``TaskJob`` subclass (``task.job_class``), and
registers it (``registry.py``).  Options the shim cannot honour are refused
here, when the task is defined, rather than when it is first sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ratelimits import parse_rate
from .current import App, current_or_none
from .exceptions import NotSupported
from .registry import registry, task_name
from .task import Task, TaskJob

#: Task options that raise NotSupported -> the alternative.
UNSUPPORTED_OPTIONS = {
    "pydantic": "Validate arguments inside the task.",
    "base_serializer": "Messages are JSON.",
}


def create_task(fun: Callable[..., Any], *, app: App | None, base: type[Task] | None = None, **options: Any) -> Task:
    """The task object for ``fun`` (what ``@app.task(...)`` returns)."""
    for key in options:
        if key in UNSUPPORTED_OPTIONS and options[key] is not None:
            raise NotSupported(f"the task option {key}=", UNSUPPORTED_OPTIONS[key])
    serializer = options.get("serializer")
    if serializer not in (None, "json"):
        raise NotSupported(f"serializer={serializer!r}", "Messages are stored as JSON: use 'json'.")
    if base is None and options.get("base") is None:
        # No base named: the app's (app.Task = CustomTask), else Task.
        owner = app if app is not None else current_or_none()
        base = getattr(owner, "_task_cls", None)
    default_base = options.get("base") is None and base is None
    base = options.pop("base", None) or base or Task
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise TypeError(f"base={base!r} must be a subclass of jobtable.shim.Task.")
    bind = bool(options.pop("bind", False))
    for ignored in ("shared", "lazy", "filter", "trail"):
        options.pop(ignored, None)
    # A shared task is named after the current app, if there is one yet.
    app_for_name = app if app is not None else current_or_none()
    name = options.pop("name", None) or task_name(fun, app_for_name)
    attributes: dict[str, Any] = {
        "name": name,
        "_bound_app": app,
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
    attributes["_jobtable_default_base"] = default_base
    task_class = type(fun.__name__, (base,), attributes)
    task: Task = task_class()
    if task.rate_limit is not None:
        # Refused now (the option or a base class's), not when a worker first meets the task.
        parse_rate(task.rate_limit, f"rate_limit of task {name!r}")
    module, _, short = name.rpartition(".")
    task.job_class = type(
        f"{short}_job", (TaskJob,), {"task": task, "__module__": module or fun.__module__, "__qualname__": short}
    )
    registry.register(task)
    return task


def rebase_default_tasks(app: App, base: type[Task]) -> None:
    """Put the registered tasks of ``app`` (and shared tasks) that were made
    on the default base onto ``base``: ``app.Task = CustomTask`` set after
    the task modules were imported (Celery builds tasks lazily, so its
    order does not matter either)."""
    for task in list(registry.tasks.values()):
        cls = type(task)
        if getattr(cls, "_jobtable_default_base", False) and getattr(task, "_bound_app", None) in (None, app):
            # Same layout (both subclass Task, no slots): the class keeps its
            # attributes, its methods now come from ``base``.
            cls.__bases__ = (base,)


def shared_task(*args: Any, **options: Any) -> Any:
    """``@shared_task`` / ``@shared_task(bind=True, ...)``: a task of the current app."""

    def decorate(fun: Callable[..., Any]) -> Task:
        return create_task(fun, app=None, **options)

    if args and callable(args[0]) and len(args) == 1 and not options:
        return decorate(args[0])
    return decorate
