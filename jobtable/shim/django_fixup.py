"""What Celery's Django fix-up (``celery/fixups/django.py``) does, for the
shim's worker and commands, when ``DJANGO_SETTINGS_MODULE`` is set:

- ``django.setup()`` before the task modules are discovered (so a task
  module may import models, and a task may call a management command);
- ``autodiscover_tasks()`` without packages discovers ``<app>.tasks`` of
  every installed Django app (``app.autodiscover_tasks`` reads
  ``django_packages`` for that);
- database connections: the supervisor closes its own before it forks
  members; a forked member drops the ones it inherited without touching the
  server (closing the socket a parent's connection shares would break it),
  then closes them; before and after each task (not in eager runs),
  connections that are unusable or older than ``CONN_MAX_AGE`` are closed
  (``close_if_unusable_or_obsolete``), and Django's caches are closed after;
- with ``DEBUG = True`` the worker warns, as Celery does (Django then keeps
  every query in memory).

Nothing here runs in a process that only sends tasks (a Django web
process): ``setup`` is called by ``jobtable worker`` and the commands that
load the app (``resolve_beat_schedules``), never at import.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from . import signals

logger = logging.getLogger("jobtable.shim")

_state: dict[str, bool] = {"setup": False}


def configured() -> bool:
    """``DJANGO_SETTINGS_MODULE`` is set and Django is installed."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        return importlib.util.find_spec("django") is not None
    except (ImportError, ValueError):
        return False


def django_packages() -> list[str]:
    """The installed Django apps' packages (Celery's default for
    ``autodiscover_tasks()`` under Django); Django is set up first if it is
    not yet (the fix-up's connection handling is the worker's: ``setup``)."""
    _django_setup()
    from django.apps import apps

    return [config.name for config in apps.get_app_configs()]


def _django_setup() -> None:
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()  # Django's own errors (ImproperlyConfigured...) name the setting


def setup() -> None:
    """For the worker and the commands: ``django.setup()`` and the
    connection handling around tasks and fork (once per process)."""
    if _state["setup"] or not configured():
        return
    _django_setup()
    _state["setup"] = True
    # weak=False: these live as long as the process.
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="jobtable.django.prerun")
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="jobtable.django.postrun")
    signals.worker_process_init.connect(_on_member_started, weak=False, dispatch_uid="jobtable.django.fork")
    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="jobtable.django.ready")
    # The supervisor forks its members next: none should inherit an open connection.
    close_database(force=True)


def close_database(force: bool = False) -> None:
    """Celery's ``_close_database``: every connection Django opened in this
    thread, closed (``force``) or closed if unusable or past ``CONN_MAX_AGE``."""
    from django.db import DatabaseError, InterfaceError, connections

    for conn in connections.all(initialized_only=True):
        try:
            if force:
                conn.close()
            else:
                conn.close_if_unusable_or_obsolete()
        except InterfaceError:
            pass
        except DatabaseError as exc:
            text = str(exc)
            if "closed" not in text and "not connected" not in text:
                raise


def close_cache() -> None:
    try:
        from django.core.cache import close_caches

        close_caches()
    except (ImportError, TypeError, AttributeError):
        pass


def _is_eager(sender: Any) -> bool:
    request = getattr(sender, "request", None)
    return bool(getattr(request, "is_eager", False))


def _on_task_prerun(sender: Any = None, **kwargs: Any) -> None:
    if not _is_eager(sender):
        close_database()


def _on_task_postrun(sender: Any = None, **kwargs: Any) -> None:
    if not _is_eager(sender):
        close_database()
        close_cache()


def _on_member_started(**kwargs: Any) -> None:
    """A forked member: the connections it inherited share their sockets
    with the supervisor's; drop the file descriptors without a goodbye to
    the server, then forget them."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        raw = getattr(conn, "connection", None)
        if raw is None:
            continue
        try:
            os.close(raw.fileno())
        except (AttributeError, OSError, TypeError, ValueError):
            pass  # SQLite has no socket; a closed one has no descriptor
    try:
        close_database(force=True)
    except Exception:  # noqa: BLE001  (the socket is gone: the close may complain)
        logger.debug("Closing inherited Django connections", exc_info=True)
    close_cache()


def _on_worker_ready(**kwargs: Any) -> None:
    from django.conf import settings

    if getattr(settings, "DEBUG", False):
        logger.warning(
            "Using settings.DEBUG leads to a memory leak, never use this setting in production environments!"
        )
