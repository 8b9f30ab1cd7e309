"""Celery's built-in tasks that the map signatures send (``maps.py``):
``celery.map``, ``celery.starmap`` and ``celery.chunks``, under Celery's
names, so a message sent by Celery's ``task.map(...)`` runs here too, and
the shim's runs on a Celery worker.

As in Celery, the mapped task is called as a function for each item
(``task(x)``, not through the queue): one message, one result, the list of
the values.
"""

from __future__ import annotations

from typing import Any

from .decorators import create_task
from .maps import CHUNKS, MAP, STARMAP, split
from .registry import registry


def _mapped(task: Any) -> Any:
    """The task a map names: its signature arrives as a dict (JSON)."""
    name = task.get("task") if isinstance(task, dict) else getattr(task, "name", task)
    return registry.get(str(name))


def xmap(task: Any, it: Any) -> list[Any]:
    fun = _mapped(task)
    return [fun(item) for item in it]


def xstarmap(task: Any, it: Any) -> list[Any]:
    fun = _mapped(task)
    return [fun(*item) for item in it]


def chunks(task: Any, it: Any, n: int) -> list[list[Any]]:
    # Sent as a message (by Celery's chunks(...).delay() of a signature
    # built elsewhere): the parts run here, one after the other.
    fun = _mapped(task)
    return [[fun(*item) for item in part] for part in split(list(it), int(n))]


def install() -> None:
    for fun, name in ((xmap, MAP), (xstarmap, STARMAP), (chunks, CHUNKS)):
        if name not in registry.tasks:
            create_task(fun, app=None, name=name)
