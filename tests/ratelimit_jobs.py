"""Jobs and shim tasks with rate limits, importable by worker processes as
``tests.ratelimit_jobs`` (``jobtable --app tests.ratelimit_jobs worker``)."""

from __future__ import annotations

import os

from jobtable import Job, register_job
from jobtable.shim import Celery

#: Four a second: 240 a minute, spelled per minute to go through the unit.
RATE = "240/m"
INTERVAL = 0.25

app = Celery("ratelimit_jobs")


@register_job
class Limited(Job):
    rate_limit = RATE

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def run(self) -> str:
        return self.tag


@register_job
class Free(Job):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def run(self) -> str:
        return self.tag


@register_job
class FailsOnce(Job):
    """Limited, and its first attempt fails (``path`` does not exist yet;
    the attempt creates it): one retry, and only real attempts count."""

    rate_limit = RATE

    def __init__(self, path: str) -> None:
        self.path = path

    def default_retries(self) -> int:
        return 1

    def run(self) -> str:
        if not os.path.exists(self.path):
            open(self.path, "w").close()
            raise RuntimeError("first attempt fails")
        return self.path


@app.task(rate_limit=RATE)
def limited_task(tag: str) -> str:
    return tag
