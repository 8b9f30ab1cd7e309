"""Importing the modules that register jobs (and chores)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .exceptions import ConfigurationError
from .settings import get_settings

#: Submodules imported automatically from the app and JOBTABLE_PACKAGES.
AUTO_MODULES = ("jobs", "chores")

#: jobtable's own modules that register built-in jobs and chores
#: (ScheduledCommand for "cmd:" schedule entries, the results chore).
BUILTIN_MODULES = ("jobtable.scheduling", "jobtable.chores")


def _import_optional(name: str) -> None:
    """Import ``name`` if it exists; errors inside it propagate."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is not None:
        importlib.import_module(name)


def load_app(app: str | None = None, submodules: tuple[str, ...] = AUTO_MODULES) -> None:
    """Import the app module (``--app`` / JOBTABLE_APP) and the ``jobs.py``
    and ``chores.py`` of the app package and of every package in
    JOBTABLE_PACKAGES (and jobtable's built-in jobs and chores)."""
    settings = get_settings()
    app = app or settings.app
    for builtin in BUILTIN_MODULES:
        importlib.import_module(builtin)
    if os.getcwd() not in sys.path:
        # Like `python -m`: the project the command runs in is importable.
        sys.path.insert(0, os.getcwd())
    packages = list(settings.packages)
    if app:
        try:
            module = importlib.import_module(app)
        except ModuleNotFoundError as exc:
            if exc.name and app.startswith(exc.name):
                raise ConfigurationError(
                    f"Cannot import the app module {app!r} ({exc}). Check --app / JOBTABLE_APP and that the "
                    "command runs where the module is importable."
                ) from None
            raise
        if hasattr(module, "__path__"):
            packages.insert(0, app)
    for package in packages:
        for submodule in submodules:
            _import_optional(f"{package}.{submodule}")
