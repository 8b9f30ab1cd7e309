"""Shim tasks by name, and the name Celery gives a task function.

One registry per process, like Celery's shared tasks.  Sending (a row's
queue, priority, limits), the canvas (``sig.apply()``) and the runner find
tasks here by name; they know a task by the ``RegisteredTask`` protocol, so
this module sits below ``task.py`` (which registers its tasks here) and all
of them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from .current import App
from .exceptions import NotRegistered


class RegisteredTask(Protocol):
    """What the modules below ``task.py`` use of a task (``Task`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def priority(self) -> int | None: ...

    @property
    def expires(self) -> float | datetime | None: ...

    @property
    def time_limit(self) -> float | None: ...

    @property
    def soft_time_limit(self) -> float | None: ...

    @property
    def concurrency_key(self) -> str | Callable[..., str] | None: ...

    def apply(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        """Run the task here and now (eager)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task function (not through the queue)."""


class TaskRegistry:
    """Shim tasks by name.  A name not found first runs the apps' pending
    autodiscovery (``app.autodiscover_tasks``), then is looked up again."""

    def __init__(self) -> None:
        self.tasks: dict[str, RegisteredTask] = {}
        #: Apps' ``discover_pending`` still to call (autodiscovery is lazy).
        self._discoveries: list[Callable[[], None]] = []

    def register(self, task: RegisteredTask) -> None:
        # Re-importing a module (reload, tests) replaces the task.
        self.tasks[task.name] = task

    def discover_later(self, discover: Callable[[], None]) -> None:
        """Call ``discover`` (an app's ``discover_pending``) when a name is first not found."""
        if discover not in self._discoveries:
            self._discoveries.append(discover)

    def discover_all(self) -> None:
        while self._discoveries:
            self._discoveries.pop()()

    def find(self, name: str) -> RegisteredTask | None:
        task = self.tasks.get(name)
        if task is None:
            self.discover_all()
            task = self.tasks.get(name)
        return task

    def get(self, name: str) -> RegisteredTask:
        task = self.find(name)
        if task is None:
            raise NotRegistered(
                f"No task named {name!r} in this process. Import the module that defines it (jobtable worker "
                "--app <module>, or app.autodiscover_tasks([...]))."
            )
        return task


registry = TaskRegistry()


def task_name(fun: Callable[..., Any], app: App | None) -> str:
    """Celery's name: ``module.function`` (``app.main`` for ``__main__``)."""
    module = fun.__module__
    if module == "__main__" and app is not None and app.main:
        module = app.main
    return f"{module}.{fun.__name__}"
