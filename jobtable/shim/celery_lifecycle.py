"""Celery's worker lifecycle signals, sent by ``jobtable worker --celery-app``.

A Celery worker sends ``celeryd_init`` and ``worker_init`` before its pool
starts, ``worker_process_init`` in each forked pool process,
``worker_ready`` once it consumes, ``worker_process_shutdown`` as a pool
process exits and ``worker_shutdown`` as it stops.  Projects hang their
set-up on them (a connection pool made per process after fork), and so does
Celery itself: its Django fix-up installs, on ``worker_init``, what closes
Django's database connections around each task and drops the connections a
forked process inherited (``celery.fixups.django.DjangoWorkerFixup``).
Without these signals a Django project under the native worker shared its
supervisor's connections with its members and kept a connection broken by a
database restart until the process died.

The native worker sends the same signals at the same points (the supervisor
before it forks, each member before it takes jobs, ...), with a sender that
has what receivers read of Celery's ``WorkController``: ``app``,
``hostname`` (the worker's control node name), ``pid``, ``pool_cls``,
``concurrency``.  Celery's threads pool sends no ``worker_process_init``,
nor does the native worker's.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ..db import bindings_sql
from ..worker import hooks

logger = logging.getLogger("jobtable.celery")

#: The pool classes Celery's receivers compare against (the Django fix-up
#: looks for "prefork" in it, to close pooled connections after fork).
POOL_CLASSES = {
    "processes": "celery.concurrency.prefork:TaskPool",
    "threads": "celery.concurrency.thread:TaskPool",
}


class NativeWorker:
    """The sender of the worker signals: the native worker as Celery's
    ``WorkController`` (and, for ``worker_ready``, its consumer) looks to a
    receiver."""

    def __init__(self, app: Any, pool: str, concurrency: int | None) -> None:
        self.app = app
        self.pid = os.getpid()
        self.hostname = bindings_sql.native_node(socket.gethostname(), self.pid)
        self.pool_cls = POOL_CLASSES.get(pool, pool)
        self.concurrency = concurrency
        # worker_ready's sender is Celery's consumer; its controller is the worker.
        self.controller = self

    def __repr__(self) -> str:
        return f"<jobtable worker {self.hostname}>"


_worker: NativeWorker | None = None


def start(app: Any, *, pool: str, concurrency: int | None = None) -> NativeWorker:
    """In the supervisor, before the pool forks: ``celeryd_init`` and
    ``worker_init`` now, the others hooked to the worker's life (once)."""
    global _worker
    if _worker is not None:
        return _worker
    from celery import signals

    worker = _worker = NativeWorker(app, pool, concurrency)
    signals.celeryd_init.send(sender=worker.hostname, instance=worker, conf=app.conf, options={})
    signals.worker_init.send(sender=worker)
    for hook_list, hook in (
        (hooks.WORKER_READY, _ready),
        (hooks.MEMBER_STARTED, _member_started),
        (hooks.MEMBER_STOPPING, _member_stopping),
        (hooks.WORKER_STOPPED, _stopped),
    ):
        if hook not in hook_list:
            hook_list.append(hook)
    return worker


def _ready(hostname: str) -> None:
    from celery import signals

    signals.worker_ready.send(sender=_worker)


def _member_started(hostname: str) -> None:
    from celery import signals

    # Celery's prefork pool sends the node name.
    signals.worker_process_init.send(sender=_worker.hostname if _worker else hostname)


def _member_stopping(hostname: str) -> None:
    from celery import signals

    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def _stopped(hostname: str) -> None:
    from celery import signals

    signals.worker_shutdown.send(sender=_worker)
