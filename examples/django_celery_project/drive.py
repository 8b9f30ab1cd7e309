"""The 14 checks of the migration: the project's features, used as the
project uses them, with the worker(s) of the current step already running.

    PROJ_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/proj python drive.py [--step N]

Prints one JSON line per check (``{"check", "ok", "detail"}``) and a last
line ``{"passed": n, "of": 14, "step": N}``; exits 1 unless all passed.
Everything is sent first and awaited after, so the run lasts about as long
as the slowest check (the 10 s beat entry).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django  # noqa: E402

django.setup()

from django.utils import timezone  # noqa: E402

from proj.celery import app  # noqa: E402
from shop import tasks as t  # noqa: E402
from shop.models import Event, Note  # noqa: E402

if os.environ.get("PROJ_CELERY_FREE"):  # step 4: the imports swapped
    from jobtable.shim import chain, group
else:
    from celery import chain, group

STEP = int(sys.argv[sys.argv.index("--step") + 1]) if "--step" in sys.argv else 0
RUN = uuid.uuid4().hex[:10]
#: How long any one outcome may take (the beat checks wait for two 5 s slots).
TIMEOUT = float(os.environ.get("PROJ_DRIVE_TIMEOUT", "30"))


def key(name: str) -> str:
    return f"{name}-{RUN}"


def wait(condition: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """The condition's value once truthy, or its last (falsy) value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def event(kind: str, key_: str) -> Event | None:
    return Event.objects.filter(kind=kind, key=key_).order_by("id").first()


def outcome(result: Any) -> tuple[str, Any]:
    """(state, value or exception) of a finished task."""
    value = result.get(timeout=TIMEOUT, propagate=False)
    return result.state, value


def kind_of(value: Any) -> str:
    return type(value).__name__ if isinstance(value, BaseException) else repr(value)


started_at = timezone.now()

# -- send everything -------------------------------------------------------------------------
long_running = t.long_sleep.delay(key("revoke"))
overrun = t.overrun.delay(key("overrun"))
failing = t.always_fails.delay(key("fail"))
errbacked = t.always_fails.apply_async((key("errback"),), link_error=t.on_error.s())
linked = t.add.apply_async((2, 2), link=t.record.s("link", key("link")))
grouped = group(t.add.s(1, 1), t.always_fails.s(key("group")), t.add.s(2, 2)).apply_async()
chained = chain(t.add.s(1, 2), t.add.s(3), t.mul.s(2)).apply_async()
flaky = t.flaky.delay(key("flaky"))
charged = t.charge.delay(key("order"), -5)
noted = t.add_note.delay(key("note"))
where = t.whereami.delay()
job_request = None
if STEP == 3:  # the management command from a Job too, run by the Celery worker
    from shop.jobs import AddNoteJob

    job_request = AddNoteJob(key("jobnote")).run_in_worker()


# -- the checks ------------------------------------------------------------------------------
def check_settings() -> tuple[bool, str]:
    # config_from_object("django.conf:settings", namespace="CELERY"): the
    # default queue (client and worker) and the queue a message arrived on.
    value = where.get(timeout=TIMEOUT)
    return value == {"default_queue": "proj", "routing_key": "proj"}, repr(value)


def check_on_failure() -> tuple[bool, str]:
    state, value = outcome(failing)
    row = wait(lambda: event("on_failure", failing.id))
    detail = row.detail if row else None
    expected = f"shop.tasks.always_fails: ValueError: always fails ({key('fail')})"
    return state == "FAILURE" and detail == expected, f"{state} {kind_of(value)}; on_failure: {detail!r}"


def check_task_failure_signal() -> tuple[bool, str]:
    outcome(failing)
    row = wait(lambda: event("task_failure", failing.id))
    detail = row.detail if row else None
    return detail == "shop.tasks.always_fails: ValueError", f"task_failure: {detail!r}"


def check_autoretry() -> tuple[bool, str]:
    state, value = outcome(flaky)
    tries = list(Event.objects.filter(kind="flaky", key=key("flaky")).order_by("id").values_list("detail", flat=True))
    return (state, value, tries) == ("SUCCESS", 2, ["0", "1", "2"]), f"{state} {kind_of(value)}; attempts {tries}"


def check_group() -> tuple[bool, str]:
    values = grouped.join(timeout=TIMEOUT, propagate=False)
    states = [r.state for r in grouped.results]
    shown = [kind_of(v) for v in values]
    ok = states == ["SUCCESS", "FAILURE", "SUCCESS"] and shown == ["2", "ValueError", "4"]
    return ok, f"states {states}, values {shown}"


def check_chain() -> tuple[bool, str]:
    value = chained.get(timeout=TIMEOUT)
    return value == 12, repr(value)


def check_dead_letter() -> tuple[bool, str]:
    value = charged.get(timeout=TIMEOUT)
    row = wait(lambda: event("dead_letter", key("order")))
    detail = row.detail if row else None
    expected = "shop.tasks.charge: negative amount -5 (queue dead_letter)"
    return value == "dead-lettered" and detail == expected, f"{value!r}; dead letter: {detail!r}"


def check_time_limit() -> tuple[bool, str]:
    begun = time.monotonic()
    state, value = outcome(overrun)
    took = time.monotonic() - begun
    finished = event("overrun_finished", key("overrun"))
    ok = state == "FAILURE" and kind_of(value) == "TimeLimitExceeded" and finished is None
    return ok, f"{state} {kind_of(value)} after {took:.1f} s of waiting; ran to its end: {finished is not None}"


def check_revoke_terminate() -> tuple[bool, str]:
    row = wait(lambda: event("started", key("revoke")))
    if row is None:
        return False, "never started"
    long_running.revoke(terminate=True)
    state = wait(lambda: long_running.state == "REVOKED" and "REVOKED", 10) or long_running.state
    # Stopped, not only recorded: its tick counter stands still.
    ticks = event("started", key("revoke")).detail  # type: ignore[union-attr]
    time.sleep(1.0)
    later = event("started", key("revoke")).detail  # type: ignore[union-attr]
    return state == "REVOKED" and ticks == later, f"{state}; ticks {ticks} then {later} a second later"


def check_link() -> tuple[bool, str]:
    linked.get(timeout=TIMEOUT)
    row = wait(lambda: event("link", key("link")))
    return row is not None and row.detail == "4", f"link callback: {row.detail if row else None!r}"


def check_link_error() -> tuple[bool, str]:
    state, _ = outcome(errbacked)
    row = wait(lambda: event("link_error", errbacked.id))
    detail = row.detail if row else None
    expected = f"ValueError: always fails ({key('errback')})"
    return state == "FAILURE" and detail == expected, f"{state}; errback: {detail!r}"


def check_management_command() -> tuple[bool, str]:
    value = noted.get(timeout=TIMEOUT)
    notes = Note.objects.filter(text=key("note")).count()
    ok, detail = value == 1 and notes == 1, f"task {value!r}, notes {notes}"
    if job_request is not None:
        job_value = app.AsyncResult(str(job_request.uuid)).get(timeout=TIMEOUT)
        job_notes = Note.objects.filter(text=key("jobnote")).count()
        ok = ok and job_value == 1 and job_notes == 1
        detail += f"; Job {job_value!r}, notes {job_notes}"
    return ok, detail


def beat_times(label: str) -> list[float]:
    rows = Event.objects.filter(kind="beat", key=label, created__gte=started_at).order_by("created")
    return [(row.created - started_at).total_seconds() for row in rows]


def check_beat(label: str, every: float, want: int) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        times = wait(lambda: len(beat_times(label)) >= want and beat_times(label), TIMEOUT) or beat_times(label)
        gaps = [b - a for a, b in zip(times, times[1:])]
        # Fired often enough, never twice for one slot (gaps near the interval).
        ok = len(times) >= want and all(gap > every * 0.75 for gap in gaps)
        return ok, f"fired at {[round(x, 1) for x in times]} s after the start"

    return check


CHECKS: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
    ("config_from_object(namespace='CELERY')", check_settings),
    ("app.Task = CustomTask: on_failure", check_on_failure),
    ("task_failure signal handler", check_task_failure_signal),
    ("autoretry_for", check_autoretry),
    ("group with a failing member", check_group),
    ("chain", check_chain),
    ("dead-letter queue fed from an except block", check_dead_letter),
    ("time_limit", check_time_limit),
    ("revoke(terminate=True)", check_revoke_terminate),
    ("link", check_link),
    ("link_error", check_link_error),
    ("shared_task calling a management command", check_management_command),
    ("CELERY_BEAT_SCHEDULE every 5 s", check_beat("5s", 5.0, 2)),
    ("CELERY_BEAT_SCHEDULE every 10 s (timedelta)", check_beat("10s", 10.0, 1)),
]

# The revoke first: the task it stops holds a pool process meanwhile.
ORDER = ["revoke(terminate=True)"] + [name for name, _ in CHECKS if name != "revoke(terminate=True)"]


def main() -> int:
    functions = dict(CHECKS)
    outcomes: dict[str, tuple[bool, str]] = {}
    for name in ORDER:
        try:
            outcomes[name] = functions[name]()
        except Exception as exc:  # noqa: BLE001  (a check that raises failed, with its error)
            outcomes[name] = (False, f"raised {type(exc).__name__}: {exc}")
    for name, _ in CHECKS:
        ok, detail = outcomes[name]
        print(json.dumps({"check": name, "ok": ok, "detail": detail}), flush=True)
    passed = sum(ok for ok, _ in outcomes.values())
    print(json.dumps({"passed": passed, "of": len(CHECKS), "step": STEP}), flush=True)
    return 0 if passed == len(CHECKS) else 1


if __name__ == "__main__":
    sys.exit(main())
