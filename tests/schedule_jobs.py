"""Jobs used by the scheduling tests; importable by child processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jobtable import Job, jobs_registry, register_job
from jobtable.scheduling import Schedule


@contextmanager
def scheduled_classes() -> Iterator[None]:
    """Register the jobs with a ``schedule`` attribute for one test only.

    Registered for good, they would join every default ``Scheduler()`` of
    the test process, other engineers' tests included.
    """
    for cls in (Nightly, BerlinMorning):
        jobs_registry.register(cls)
    try:
        yield
    finally:
        for cls in (Nightly, BerlinMorning):
            jobs_registry.jobs.pop(jobs_registry.name_of(cls), None)
            jobs_registry._names.pop(cls, None)


class Nightly(Job):
    """Has a schedule class attribute (registered by scheduled_classes())."""

    schedule = Schedule.from_cron("0 3 * * *")

    def run(self) -> str:
        return "nightly"


class BerlinMorning(Job):
    """Scheduled in its own time zone (registered by scheduled_classes())."""

    schedule = Schedule.from_cron("0 9 * * mon-fri", timezone="Europe/Berlin")

    def run(self) -> str:
        return "guten Morgen"


@register_job
class Report(Job):
    """Takes arguments: scheduled as an instance."""

    def __init__(self, kind: str, days: int = 1) -> None:
        self.kind = kind
        self.days = days

    def run(self) -> dict[str, Any]:
        return {"kind": self.kind, "days": self.days}


@register_job
class Tick(Job):
    """A plain job for scheduler tests."""

    def run(self) -> None:
        return None


@register_job
class Hourly(Job):
    """Another plain job for scheduler tests."""

    def run(self) -> None:
        return None


@register_job
class OwnKey(Job):
    """Brings its own concurrency key: the scheduler keeps it."""

    def default_concurrency_key(self) -> str:
        return "own-key"

    def run(self) -> None:
        return None


@register_job
class Refuses(Job):
    """should_enqueue blows up: the scheduler must report it and go on."""

    def should_enqueue(self, concurrency_key: str) -> bool:
        raise RuntimeError("refusing on purpose")

    def run(self) -> None:
        return None
