"""The current app: the one ``@shared_task`` tasks, signatures and results use
when they were given none.

``Celery.__init__`` makes each new app current (unless
``set_as_current=False``); ``current_app()`` returns it, or a default app when
none was created.  The modules below ``app.py`` (tasks, canvas, sending,
results) need of an app only its name and its settings: they know it by the
``App`` protocol, so none of them imports ``app.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .conf import Settings


class App(Protocol):
    """What the shim's lower modules use of an app (``Celery`` is one)."""

    @property
    def main(self) -> str | None: ...

    @property
    def conf(self) -> Settings: ...


_current: App | None = None

#: Makes the default app (``Celery("default")``); set by ``app.py`` when it
#: is imported -- which importing ``jobtable.shim`` always does first.
_make_default: Callable[[], App] | None = None


def set_current(app: App) -> None:
    global _current
    _current = app


def set_default_factory(factory: Callable[[], App]) -> None:
    global _make_default
    _make_default = factory


def current_or_none() -> App | None:
    """The current app, without making a default one (a task's name uses it if there is one)."""
    return _current


def current_app() -> App:
    """The app created last (a default one if none was)."""
    global _current
    if _current is None:
        if _make_default is None:  # pragma: no cover  (jobtable.shim imports app.py)
            raise RuntimeError("jobtable.shim.app is not imported: import jobtable.shim first.")
        _current = _make_default()
    return _current
