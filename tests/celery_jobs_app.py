"""The Celery app of tests/test_celery_jobs.py: the jobtable broker and
result backend, the Jobs of tests.celery_jobs_jobs registered with
``register_jobs`` (``celery -A tests.celery_jobs_app worker``).

Environment: JOBTABLE_DATABASE_URL; JT_ACKS_LATE=1 acks after the task
(the held row keeps the concurrency key, as compat_tests/mixed_app.py);
JT_SCHEDULED=1 registers ``Every2s`` (a Job with a schedule: only the
worker processes of the schedule test import it); JT_SCHEDULES=0 passes
``schedules=False``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready

import tests.celery_jobs_jobs as jobs
from jobtable.shim.celery_jobs import register_jobs
from tests.transport_helpers import FAST_OPTIONS

url = os.environ["JOBTABLE_DATABASE_URL"]
app = Celery("jt_celery_jobs", broker="jobtable+" + url, backend="jobtable+" + url)
app.conf.update(
    broker_transport_options=dict(FAST_OPTIONS),
    broker_connection_retry_on_startup=True,
    task_acks_late=os.environ.get("JT_ACKS_LATE") == "1",
    worker_prefetch_multiplier=1,
    task_default_queue=jobs.QUEUE,
)

if os.environ.get("JT_SCHEDULED") == "1":
    from jobtable import register_job
    from jobtable.scheduling import Schedule

    @register_job
    class Every2s(jobs._Base):
        """Appends ``tick <time>`` to JT_RECORD every 2 s."""

        schedule = Schedule.every(2)

        def __init__(self) -> None:
            super().__init__(os.environ["JT_RECORD"], "tick")

        def run(self) -> None:
            import time

            with open(self.path, "a") as f:
                f.write(f"tick {time.time():.3f} {os.getpid()}\n")


@worker_ready.connect
def _ready(**_: Any) -> None:
    with open(os.environ["JT_RECORD"], "a") as f:
        f.write(f"READY {os.getpid()}\n")


register_jobs(app, schedules=os.environ.get("JT_SCHEDULES") != "0")
