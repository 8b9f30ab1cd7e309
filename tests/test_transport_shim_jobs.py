"""register_jobs: every registered Job becomes a Celery task of the same name."""

from __future__ import annotations

import pytest
from celery import Celery

from jobtable.registry import jobs_registry
from jobtable.shim.celery_jobs import register_jobs
from tests.conftest import ALL_DIALECTS

from . import sample_jobs

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def test_register_jobs_makes_celery_tasks_that_run_the_job(db_url: str) -> None:
    app = Celery("register_jobs_test", broker="jobtable+" + db_url, set_as_current=False)
    echo_name = jobs_registry.name_of(sample_jobs.Echo)

    @app.task(name=jobs_registry.name_of(sample_jobs.Keyed), shared=False)
    def already_taken() -> str:
        return "celery's own"

    registered = register_jobs(app)
    assert echo_name in registered
    assert jobs_registry.name_of(sample_jobs.Keyed) not in registered  # left alone
    assert set(registered) <= set(app.tasks)
    # Run as a Celery worker would: arguments as they travel in the message.
    assert app.tasks[echo_name](1, "two", key=3) == {"args": [1, "two"], "kwargs": {"key": 3}}
    # The Job itself is left as it was: its name still resolves to the class,
    # and the class still runs as a Job.
    assert jobs_registry.get(echo_name) is sample_jobs.Echo
    assert sample_jobs.Echo(1, key=2).run() == {"args": [1], "kwargs": {"key": 2}}
