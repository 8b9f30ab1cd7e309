"""A Django-style shim app: settings read with ``config_from_object(...,
namespace="CELERY")`` before any task module exists; its beat schedule
names a task of a package found by ``autodiscover_tasks`` (lazy).  With
SHIM_DEFERRED_BAD set, an entry also names a task nobody defines."""

from __future__ import annotations

import os
from datetime import timedelta

from jobtable.shim import Celery


class Settings:
    CELERY_BEAT_SCHEDULE = {
        "ping-every-5s": {"task": "tests.shim_deferred_pkg.tasks.ping", "schedule": 5.0},
        "ping-every-10s": {"task": "tests.shim_deferred_pkg.tasks.ping", "schedule": timedelta(seconds=10)},
    }
    if os.environ.get("SHIM_DEFERRED_BAD"):
        CELERY_BEAT_SCHEDULE["typo"] = {"task": "tests.shim_deferred_pkg.tasks.pnig", "schedule": 60}


app = Celery("deferred")
app.config_from_object("tests.shim_deferred_app:Settings", namespace="CELERY")
app.autodiscover_tasks(["tests.shim_deferred_pkg"])
