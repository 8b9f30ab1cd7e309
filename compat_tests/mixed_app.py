"""The Celery app of a project mid-migration: the compat tasks plus the Jobs
of ``compat_tests.jobs``, which ``register_jobs`` lets a Celery worker run
(``celery -A compat_tests.mixed_app worker``)."""

from __future__ import annotations

import compat_tests.jobs  # noqa: F401  (registers the Jobs)
from compat_tests.app import app
from jobtable.shim.celery_jobs import register_jobs

# A Celery worker acks a message when it starts the task unless acks_late:
# with an early ack the row leaves the table at once, and with it the
# concurrency key (see test_mixed.test_celery_early_ack_releases_the_key).
app.conf.task_acks_late = True
register_jobs(app)

__all__ = ["app"]
