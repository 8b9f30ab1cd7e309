"""``task.map(it)``, ``task.starmap(it)``, ``task.chunks(it, n)``: Celery's
map signatures, on the same built-in tasks Celery has (``celery.map``,
``celery.starmap``, ``celery.chunks``, registered by ``builtin_tasks.py``).

As in Celery, a map is *one* message: one worker calls the task function on
every item in turn (not through the queue) and the result is the list of
their values.  ``chunks(it, n)`` is a group of ``starmap`` messages of ``n``
items each, so the work is spread over workers, and its result is a
``GroupResult`` (a list of lists).  The message goes to the queue of the
mapped task (Celery routes it by that name, ``route_name``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from .. import limits
from . import send
from .canvas import Signature, _app, group
from .registry import registry

MAP = "celery.map"
STARMAP = "celery.starmap"
CHUNKS = "celery.chunks"
BUILTIN_NAMES = frozenset({MAP, STARMAP, CHUNKS})


def _task_signature(task: Any, what: str) -> Signature:
    """The mapped task as a signature: a task (``add.map``), a signature, or a name."""
    if isinstance(task, Signature):
        return task
    if isinstance(task, str):
        return Signature(task)
    name = getattr(task, "name", None)
    if isinstance(name, str) and name:
        return Signature(name, app=getattr(task, "_bound_app", None))
    raise TypeError(f"{what}: the task must be a task, a signature or a task name, got {limits.short(task)}.")


def _items(it: Any, what: str) -> list[Any]:
    if isinstance(it, (str, bytes)) or not isinstance(it, Iterable):
        # Celery would iterate a string's characters; a string here is a mistake.
        raise TypeError(f"{what}: it= must be a list (or another iterable) of items, got {type(it).__name__}.")
    return list(it)


def chunk_size(n: Any) -> int:
    """``n`` of ``chunks(it, n)``: a whole number, 1 or more."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or (isinstance(n, float) and not n.is_integer()):
        raise TypeError(f"chunks(it, n={limits.short(n)}): n must be a whole number of items per chunk, 1 or more.")
    if isinstance(n, float) and (math.isinf(n) or math.isnan(n)):
        raise ValueError(f"chunks(it, n={n}): n must be a whole number of items per chunk, 1 or more.")
    if n < 1:
        raise ValueError(f"chunks(it, n={n}): n must be a whole number of items per chunk, 1 or more.")
    return int(n)


def split(items: list[Any], n: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


class _basemap(Signature):  # noqa: N801  (Celery's name)
    _task_name = MAP

    def __init__(self, task: Any, it: Any, app: Any = None, **options: Any) -> None:
        what = f"{type(self).__name__}()"
        inner = _task_signature(task, what)
        super().__init__(
            self._task_name,
            (),
            {"task": inner, "it": _items(it, what)},
            options,
            immutable=True,
            app=app if app is not None else inner._app,
        )

    @property
    def mapped(self) -> Signature:
        return self.kwargs["task"]  # type: ignore[no-any-return]

    def clone(self, args: Any = None, kwargs: Any = None, **options: Any) -> _basemap:
        # Immutable, as in Celery: a chain's previous value is not added.
        return type(self)(self.mapped, self.kwargs["it"], app=self._app, **{**self.options, **options})

    def to_dict(self) -> dict[str, Any]:
        options = dict(self.options)
        if not options.get("queue"):
            # Celery routes a map by the mapped task's name (route_name).
            name = str(self.mapped.task)
            options["queue"] = send.route(_app(self._app), name, registry.find(name), (), {}, {})
        sig = Signature(
            self._task_name,
            (),
            {"task": self.mapped.to_dict(), "it": self.kwargs["it"]},
            options,
            immutable=True,
            app=self._app,
        )
        return sig.to_dict()

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Run now, in this process (eager)."""
        sig = Signature(
            self._task_name,
            (),
            {"task": self.mapped.to_dict(), "it": self.kwargs["it"]},
            {**self.options, **options},
            immutable=True,
            app=self._app,
        )
        return sig.apply()

    def __repr__(self) -> str:
        return f"[{self.mapped.task}({'*' if self._task_name == STARMAP else ''}x) for x in {self.kwargs['it']!r}]"


class xmap(_basemap):  # noqa: N801
    """``task.map(it)``: ``[task(x) for x in it]`` in one worker."""

    _task_name = MAP


class xstarmap(_basemap):  # noqa: N801
    """``task.starmap(it)``: ``[task(*x) for x in it]`` in one worker."""

    _task_name = STARMAP


class chunks(Signature):  # noqa: N801
    """``task.chunks(it, n)``: a group of ``starmap`` messages of ``n`` items each."""

    def __init__(self, task: Any, it: Any, n: Any, app: Any = None, **options: Any) -> None:
        inner = _task_signature(task, "chunks()")
        super().__init__(
            CHUNKS,
            (),
            {"task": inner, "it": _items(it, "chunks()"), "n": chunk_size(n)},
            options,
            immutable=True,
            app=app if app is not None else inner._app,
        )

    def group(self) -> group:
        task, it, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        return group([xstarmap(task, part, app=self._app, **self.options) for part in split(it, n)], app=self._app)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if options:  # queue=, priority=...: on every part
            task, it, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
            return chunks(task, it, n, app=self._app, **{**self.options, **options}).group().apply_async()
        return self.group().apply_async()

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return self.group().apply()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async()
