"""The shop app's tasks: ordinary Celery task code (only the import lines
marked "step 4" change when Celery goes)."""

import os
import time

from django.core.management import call_command

if os.environ.get("PROJ_CELERY_FREE"):  # step 4: the imports swapped, Celery uninstalled
    from jobtable.shim import shared_task
    from jobtable.shim.signals import task_failure
else:
    from celery import shared_task
    from celery.signals import task_failure

from .models import Event, Note


def record_event(kind: str, key: str, detail: str = "") -> None:
    Event.objects.create(kind=kind, key=key, detail=detail)


@task_failure.connect
def note_failure(sender=None, task_id=None, exception=None, **kwargs):  # type: ignore[no-untyped-def]
    record_event("task_failure", task_id, f"{sender.name}: {type(exception).__name__}")


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def mul(x: int, y: int) -> int:
    return x * y


@shared_task
def always_fails(key: str) -> None:
    raise ValueError(f"always fails ({key})")


@shared_task
def record(value, kind: str, key: str) -> None:  # type: ignore[no-untyped-def]
    """A link callback: the parent's value first."""
    record_event(kind, key, repr(value))


@shared_task
def on_error(request, exc, traceback):  # type: ignore[no-untyped-def]
    """A link_error callback, Celery's (request, exc, traceback) form."""
    record_event("link_error", request.id, f"{type(exc).__name__}: {exc}")


@shared_task(bind=True, autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 3, "countdown": 0.2})
def flaky(self, key: str) -> int:  # type: ignore[no-untyped-def]
    record_event("flaky", key, str(self.request.retries))
    if self.request.retries < 2:
        raise ConnectionError("upstream down")
    return self.request.retries


@shared_task(bind=True)
def charge(self, order: str, cents: int) -> str:  # type: ignore[no-untyped-def]
    try:
        if cents < 0:
            raise ValueError(f"negative amount {cents}")
        return f"charged {cents}"
    except ValueError as exc:
        # Routed to the dead-letter queue by CELERY_TASK_ROUTES.
        dead_letter.delay(self.name, order, str(exc))
        return "dead-lettered"


@shared_task(bind=True)
def dead_letter(self, task_name: str, key: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    queue = (self.request.delivery_info or {}).get("routing_key")
    record_event("dead_letter", key, f"{task_name}: {reason} (queue {queue})")


@shared_task(time_limit=1)
def overrun(key: str) -> None:
    time.sleep(30)
    record_event("overrun_finished", key)


@shared_task
def long_sleep(key: str) -> None:
    """Runs for 30 s, counting its ticks in one row (so a stop is seen)."""
    record_event("started", key, "0")
    for tick in range(1, 151):
        time.sleep(0.2)
        Event.objects.filter(kind="started", key=key).update(detail=str(tick))
    record_event("finished", key)


@shared_task
def add_note(text: str) -> int:
    call_command("addnote", text)
    return Note.objects.filter(text=text).count()


@shared_task(bind=True)
def whereami(self) -> dict:  # type: ignore[no-untyped-def]
    return {
        "default_queue": self.app.conf.task_default_queue,
        "routing_key": (self.request.delivery_info or {}).get("routing_key"),
    }


@shared_task
def beat_pulse(label: str) -> None:
    record_event("beat", label)
