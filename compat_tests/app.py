"""The app module of the compat tests: the ONLY place that chooses between
Celery and jobtable's Celery-free shim.

``COMPAT_API=celery`` (default): the real ``celery`` package, with jobtable as
broker and result backend -- run by ``celery -A compat_tests.app worker`` or
by ``jobtable worker --celery-app compat_tests.app:app``.

``COMPAT_API=shim``: ``jobtable.shim`` (Celery need not be installed) -- run by
``jobtable --app compat_tests.tasks worker``.

The import line below is exactly the line a migrating project changes when it
drops Celery; ``tasks.py`` is not touched.  Environment:
JOBTABLE_DATABASE_URL (the database), COMPAT_API.
"""

from __future__ import annotations

import os

import jobtable  # noqa: F401  (registers the jobtable+ broker URLs with Kombu)

API = os.environ.get("COMPAT_API", "celery")

if API == "shim":
    from jobtable.shim import AsyncResult, Celery, chain, chord, group, states
else:
    from celery import Celery, chain, chord, group, states
    from celery.result import AsyncResult

#: COMPAT_BACKEND=redis: the reference -- Celery with Redis as broker and
#: result backend (COMPAT_REDIS_URL), under the same tests.
BACKEND = os.environ.get("COMPAT_BACKEND", "jobtable")
URL = os.environ["COMPAT_REDIS_URL"] if BACKEND == "redis" else "jobtable+" + os.environ["JOBTABLE_DATABASE_URL"]
#: Not "celery": other tests' workers on the same database never take these.
QUEUE = "compat"

app = Celery("compat", broker=URL, backend=URL, include=["compat_tests.tasks"])
app.conf.update(task_default_queue=QUEUE, result_extended=True)

if API == "celery":
    # Settings only a Celery worker/client reads (the shim refuses transport
    # options: it has no transport).
    if BACKEND == "redis":
        # A key prefix per test run: runs on one Redis never share a queue.
        options = {"global_keyprefix": os.environ.get("COMPAT_REDIS_PREFIX", "compat:")}
    else:
        options = {"polling_interval": 0.5, "lease_seconds": 5, "eta_interval": 0.05}
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(os.environ.get("COMPAT_PREFETCH", "4")),
        result_chord_join_timeout=10,
    )

__all__ = ["API", "BACKEND", "QUEUE", "AsyncResult", "app", "chain", "chord", "group", "states"]
