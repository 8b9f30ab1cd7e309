"""Jobs used by the scheduling tests; importable by child processes."""

from __future__ import annotations

from typing import Any

from jobtable import Job, register_job
from jobtable.scheduling import Schedule


@register_job
class Nightly(Job):
    """Has a schedule class attribute."""

    schedule = Schedule.from_cron("0 3 * * *")

    def run(self) -> str:
        return "nightly"


@register_job
class BerlinMorning(Job):
    """Scheduled in its own time zone."""

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
