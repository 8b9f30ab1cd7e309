"""Jobs (jobtable's own API) that share the compat queue with the Celery tasks."""

from __future__ import annotations

import os
import time

from compat_tests.tasks import append, wait_at_gate, who
from jobtable import Job, register_job


@register_job
class RecordJob(Job):
    """Appends ``tag`` to ``path`` (the line format of tasks.record)."""

    def __init__(self, path: str, tag: str, gate: str | None = None) -> None:
        self.path, self.tag, self.gate = path, tag, gate

    def run(self) -> str:
        wait_at_gate(self.gate)
        append(self.path, self.tag, 0, time.time(), who())
        return self.tag


@register_job
class HoldJob(Job):
    """Holds the concurrency key ``account-<n>`` until ``release`` exists."""

    def __init__(self, path: str, release: str, account: int) -> None:
        self.path, self.release, self.account = path, release, account

    def default_concurrency_key(self) -> str:
        return f"account-{self.account}"

    def run(self) -> str:
        append(self.path, "holdjob", self.account, time.time(), who())
        deadline = time.monotonic() + 60
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return f"held account-{self.account}"
