"""Logging of ``jobtable worker --celery-app`` as a Celery worker logs.

A Celery worker configures logging through ``app.log.setup`` (the root
logger taken over when ``worker_hijack_root_logger``, lines formatted with
``worker_log_format`` / ``worker_task_log_format``, a ``setup_logging``
receiver of the app's own wins), logs ``Task X[id] received`` (its
strategy) and ``Task X[id] succeeded in Ns: result`` (its tracer), and sends
``print()`` to the ``celery.redirected`` logger at
``worker_redirect_stdouts_level`` when ``worker_redirect_stdouts``.  The
native worker does the same, in the supervisor before the pool forks
(members inherit it); jobtable's own lines then go through the root logger,
in the app's format.  Without --celery-app nothing here runs.
"""

from __future__ import annotations

import logging
from typing import Any

#: Celery's strategy logger: the "received" line comes from it under Celery.
_received = logging.getLogger("celery.worker.strategy")


def setup(app: Any, level: int | str | None = None, *, hostname: str | None = None) -> bool:
    """Configure logging as ``celery worker`` does; True when Celery's own
    configuration ran (no ``setup_logging`` receiver took it over)."""
    if level is None:
        level = logging.getLogger("jobtable").getEffectiveLevel()
    receivers = app.log.setup(level, None, redirect_stdouts=False, colorize=None, hostname=hostname)
    custom = bool(receivers)
    jobtable_logger = logging.getLogger("jobtable")
    # jobtable's lines in the app's format (or its own logging configuration).
    jobtable_logger.handlers[:] = []
    jobtable_logger.propagate = True
    if not custom and app.conf.worker_redirect_stdouts:
        app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)
    return not custom


def log_received(name: str, task_id: str, headers: dict[str, Any]) -> None:
    """Celery's ``Task X[id] received`` line (with the same ``extra``)."""
    if not _received.isEnabledFor(logging.INFO):
        return
    from celery.app.trace import LOG_RECEIVED

    context = {
        "id": task_id,
        "name": name,
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "eta": headers.get("eta"),
    }
    _received.info(LOG_RECEIVED, context, extra={"data": context})
