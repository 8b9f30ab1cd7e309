"""Importing the modules that register jobs (and chores)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

from .exceptions import ConfigurationError
from .settings import get_settings

logger = logging.getLogger("jobtable.discovery")

#: With no app setting, a package of this name in the working directory is
#: the app (plain's convention: ``app/jobs.py``, ``app/chores.py``).
DEFAULT_APP = "app"

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


def default_app(cwd: str | None = None) -> str | None:
    """``app`` when the working directory holds a package of that name (with
    or without ``__init__.py``) that ``import app`` would find; else None."""
    where = os.path.join(cwd or os.getcwd(), DEFAULT_APP)
    if not os.path.isdir(where):
        return None
    try:
        spec = importlib.util.find_spec(DEFAULT_APP)
    except (ImportError, ValueError):
        spec = None
    locations = [os.path.realpath(p) for p in (spec.submodule_search_locations or [])] if spec else []
    if os.path.realpath(where) not in locations:
        # Another module called ``app`` comes first on sys.path: importing
        # it would run someone else's code.
        logger.warning(
            "%s is not imported: `import %s` finds %s. Set JOBTABLE_APP (or --app) to choose the app module.",
            where, DEFAULT_APP, spec.origin if spec and spec.origin else "another module",
        )
        return None
    return DEFAULT_APP


def _subpackages_with(package: str, path: list[str], submodules: tuple[str, ...]) -> list[str]:
    """``package.pkg`` for each direct subpackage holding one of ``submodules``
    (``app/{pkg}/jobs.py``).  Looked up as files, so a subpackage without
    them is not imported."""
    found = []
    for root in path:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            if not name.isidentifier() or not os.path.isdir(os.path.join(root, name)):
                continue
            if any(os.path.isfile(os.path.join(root, name, f"{sub}.py")) for sub in submodules):
                found.append(f"{package}.{name}")
    return found


def load_app(app: str | None = None, submodules: tuple[str, ...] = AUTO_MODULES) -> None:
    """Import the app module (``--app`` / JOBTABLE_APP; without them, the
    ``app`` package of the working directory) and the ``jobs.py`` and
    ``chores.py`` of the app package, of its direct subpackages
    (``app/{pkg}/jobs.py``) and of every package in JOBTABLE_PACKAGES (and
    jobtable's built-in jobs and chores)."""
    settings = get_settings()
    app = app or settings.app
    for builtin in BUILTIN_MODULES:
        importlib.import_module(builtin)
    if os.getcwd() not in sys.path:
        # Like `python -m`: the project the command runs in is importable.
        sys.path.insert(0, os.getcwd())
    packages = list(settings.packages)
    if not app:
        app = default_app() or ""
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
            packages[:0] = [app, *_subpackages_with(app, list(module.__path__), submodules)]
    for package in packages:
        for submodule in submodules:
            _import_optional(f"{package}.{submodule}")
