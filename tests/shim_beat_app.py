"""A shim app whose beat schedule is set at import, as in a Celery project
(``jobtable --app tests.shim_beat_app ...``)."""

from __future__ import annotations

from jobtable.shim import Celery, crontab
from tests import shim_tasks

app = Celery("beat_app", set_as_current=False)
app.conf.beat_schedule = {
    "nightly-total": {"task": "tests.shim_tasks.total", "schedule": crontab(minute=15, hour=3), "args": ([1, 2],)},
    "every-10-minutes": {"task": "tests.shim_tasks.echo", "schedule": 600, "args": ("tick",)},
}

__all__ = ["app", "shim_tasks"]
