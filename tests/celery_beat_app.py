"""A Celery app whose ``beat_schedule`` the native worker runs
(``jobtable worker --celery-app tests.celery_beat_app:app``); broker and
result backend are jobtable.

Environment: JOBTABLE_DATABASE_URL; JT_RECORD (a file where ``tick``
appends one JSON line per run); JT_BEAT: which beat_schedule -- ``ok`` (a
1 s interval with args, kwargs and a queue option, and a crontab), or a
broken one (``unknown``: an entry naming no task, ``solar``).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab, solar

import jobtable  # noqa: F401  (registers the jobtable+ URLs with Kombu)

URL = "jobtable+" + os.environ["JOBTABLE_DATABASE_URL"]
QUEUE = "celery_beat_default"
BEAT_QUEUE = "celery_beat_q"

app = Celery("jt_beat", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"polling_interval": 0.5, "lease_seconds": 5, "eta_interval": 0.05},
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
)


@app.task(bind=True, name="tests.celery_beat_app.tick", shared=False)
def tick(self: Any, label: str, n: int = 0) -> str:
    with open(os.environ["JT_RECORD"], "a") as out:
        out.write(json.dumps({
            "id": self.request.id,
            "label": label,
            "n": n,
            "queue": (self.request.delivery_info or {}).get("routing_key"),
            "beat": bool(getattr(self.request, "celery_beat_task", False)),
        }) + "\n")
    return label


_CASES: dict[str, dict[str, Any]] = {
    "ok": {
        "tick-every-second": {
            "task": "tests.celery_beat_app.tick",
            "schedule": 1.0,
            "args": ["every-second"],
            "kwargs": {"n": 7},
            "options": {"queue": BEAT_QUEUE},
        },
        "tick-hourly": {"task": "tests.celery_beat_app.tick", "schedule": crontab(minute=0), "args": ["hourly"]},
        "tick-daily": {"task": "tests.celery_beat_app.tick", "schedule": timedelta(days=1), "args": ["daily"]},
    },
    "unknown": {
        "tick-every-second": {"task": "tests.celery_beat_app.tick", "schedule": 1.0, "args": ["x"]},
        "report-nightly": {"task": "tests.celery_beat_app.no_such_task", "schedule": crontab(minute=0, hour=3)},
    },
}


def _solar() -> Any:
    """A solar schedule without ephem (which celery's constructor imports):
    the worker refuses the class before it would compute anything."""
    value = solar.__new__(solar)
    value.event, value.lat, value.lon = "dawn_astronomical", 52.5, 13.4
    return value


if os.environ.get("JT_BEAT") == "solar":
    _CASES["solar"] = {"at-dawn": {"task": "tests.celery_beat_app.tick", "schedule": _solar(), "args": ["dawn"]}}

app.conf.beat_schedule = _CASES[os.environ.get("JT_BEAT", "ok")]
