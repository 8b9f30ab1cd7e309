"""The Celery app: step 1 of the migration is done -- broker and result
backend are jobtable's table (a SQLite file here; PostgreSQL in production).

Nothing else changed for the Celery tasks in ``proj.tasks``.  ``register_jobs``
lets this Celery worker run the Jobs of ``proj.jobs`` as well, so either kind
of worker can drain the one queue while the rewrite goes on.
"""

from __future__ import annotations

import os

from celery import Celery

import jobtable  # noqa: F401  (registers the jobtable+ broker URLs with Kombu)
from jobtable.shim.celery_jobs import register_jobs

DATABASE_URL = os.environ.get("JOBTABLE_DATABASE_URL", "sqlite:///shop.sqlite3")
BROKER = "jobtable+" + DATABASE_URL

app = Celery("proj", broker=BROKER, backend=BROKER, include=["proj.tasks"])
app.conf.update(
    task_default_queue="default",  # the Job API's default queue: one queue for both kinds
    task_acks_late=True,  # a running task keeps its row (and its concurrency key) until it is done
    broker_connection_retry_on_startup=True,
    # The beat_schedule that used to be here now lives in proj/jobs.py as
    # `schedule = Schedule.from_cron(...)` on the Jobs: every jobtable worker
    # runs the scheduler, so `celery beat` is no longer deployed.
)

import proj.jobs  # noqa: E402,F401  (the Jobs, so that register_jobs sees them)

register_jobs(app)
