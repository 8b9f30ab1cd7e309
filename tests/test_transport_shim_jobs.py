"""register_jobs: every registered Job becomes a Celery task of the same name."""

from __future__ import annotations

import os

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
    assert not app.finalized  # lazy: made when the app finalizes
    assert set(registered) <= set(app.tasks)
    assert app.tasks[jobs_registry.name_of(sample_jobs.Keyed)]() == "celery's own"  # left alone
    # Run as a Celery worker would: arguments as they travel in the message.
    assert app.tasks[echo_name](1, "two", key=3) == {"args": [1, "two"], "kwargs": {"key": 3}}
    # The Job itself is left as it was: its name still resolves to the class,
    # and the class still runs as a Job.
    assert jobs_registry.get(echo_name) is sample_jobs.Echo
    assert sample_jobs.Echo(1, key=2).run() == {"args": [1], "kwargs": {"key": 2}}


def test_register_jobs_is_lazy_so_app_task_set_later_applies(db_url: str) -> None:
    """issue 15: register_jobs before ``app.Task = CustomTask`` (a Celery
    app module's usual order) must not finalize the app, so the tasks get
    the app-wide base class and its on_failure."""
    from celery import Task

    app = Celery("register_jobs_lazy", broker="jobtable+" + db_url, set_as_current=False)
    register_jobs(app)
    failures: list[str] = []

    class CustomTask(Task):  # type: ignore[misc]
        def on_failure(self, exc: BaseException, task_id: str, args: object, kwargs: object, einfo: object) -> None:
            failures.append(self.name)

    app.Task = CustomTask
    echo = app.tasks[jobs_registry.name_of(sample_jobs.Echo)]
    assert isinstance(echo, CustomTask)
    # Once finalized, a later call registers at once.
    assert register_jobs(app, [jobs_registry.name_of(sample_jobs.Echo)]) == []
    with pytest.raises(Exception):
        register_jobs(app, ["no.such.Job"])


@pytest.mark.parametrize(
    "options", [{"schedules": "yes"}, {"schedules": None}, {"schedules": 1}, {"bind": False}, {"bind": True}]
)
def test_register_jobs_refuses_bad_options_naming_them(db_url: str, options: dict[str, object]) -> None:
    app = Celery("register_jobs_bad", broker="jobtable+" + db_url, set_as_current=False)
    name = next(iter(options))
    with pytest.raises(TypeError, match=rf"register_jobs\({name}="):
        register_jobs(app, **options)  # type: ignore[arg-type]


def test_a_job_task_called_directly_runs_the_job_once_without_celery_retries(db_url: str) -> None:
    """Called inline (no worker, no message), a failing Job with retries
    raises its own exception at once: Celery's retry only re-raises there."""
    from . import celery_jobs_jobs  # registers its Jobs, before register_jobs reads the registry

    app = Celery("register_jobs_direct", broker="jobtable+" + db_url, set_as_current=False)
    register_jobs(app)
    app.finalize()

    task = app.tasks[jobs_registry.name_of(celery_jobs_jobs.AlwaysFails)]
    with pytest.raises(celery_jobs_jobs.NotYet, match="t always"):
        task(os.devnull, "t")


def test_defer_job_pickles_with_its_arguments() -> None:
    """Celery stores an exception only if it pickles (else a wrapper named
    UnpickleableExceptionWrapper takes its place in the result row)."""
    import pickle

    from celery.utils.serialization import get_pickleable_exception

    from jobtable.jobs import DeferJob

    defer = pickle.loads(pickle.dumps(DeferJob(delay=2.5, increment_retries=True)))
    assert (type(defer), defer.delay, defer.increment_retries, defer.args) == (DeferJob, 2.5, True, ("deferred for 2.5 s",))
    assert type(get_pickleable_exception(DeferJob(delay=0))) is DeferJob
