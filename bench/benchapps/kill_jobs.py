"""The native worker's jobs of the kill/restart scenario
(``jobtable --app benchapps.kill_jobs worker``).

``Work`` sleeps 1-20 ms between its start and end lines (``runlog``).  It has
retries: a job that was running when its worker was killed is recorded LOST
and must run again -- the scenario's "nothing lost" depends on it -- with no
delay, like Celery's ``acks_late`` redelivery it is compared with.
"""

from __future__ import annotations

from jobtable import Job, register_job

from .runlog import work

#: Enough for a job to be caught running by several kills in a row.
RETRIES = 5


@register_job
class Work(Job):
    def __init__(self, token: str, ms: float) -> None:
        self.token = token
        self.ms = ms

    def default_queue(self) -> str:
        return "bench"

    def default_retries(self) -> int:
        return RETRIES

    def run(self) -> None:
        work(self.token, self.ms)
