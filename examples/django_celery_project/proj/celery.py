"""The project's Celery app, in Celery's Django layout.

Step 4 of jobtable's migration guide changes only the import lines marked
"step 4"; PROJ_CELERY_FREE=1 stands for that edit here, so one copy of the
project serves every step.  Step 3 adds ``register_jobs(app)`` (PROJ_STEP=3).
"""

import os

if os.environ.get("PROJ_CELERY_FREE"):  # step 4: the imports swapped, Celery uninstalled
    from jobtable.shim import Celery, Task
else:
    from celery import Celery, Task

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")


class CustomTask(Task):
    """The project's base for every task: failures are written down."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        from shop.models import Event

        Event.objects.create(kind="on_failure", key=task_id, detail=f"{self.name}: {type(exc).__name__}: {exc}")
        super().on_failure(exc, task_id, args, kwargs, einfo)


app.Task = CustomTask
app.autodiscover_tasks()

if os.environ.get("PROJ_STEP") == "3":  # step 3: Jobs run by this app's Celery workers
    from jobtable.shim.celery_jobs import register_jobs

    import shop.jobs  # noqa: F401  (registers the Jobs)

    register_jobs(app)
