"""jobtable's jobs (``jobtable --app benchapps.jobtable_jobs worker``)."""

from __future__ import annotations

from jobtable import Job, register_job

from .record import record


@register_job
class Noop(Job):
    def run(self) -> None:
        pass


@register_job
class Stamp(Job):
    def __init__(self, sent: float) -> None:
        self.sent = sent

    def run(self) -> None:
        record(self.sent)
