"""The quickstart's jobs.  The worker imports this module (``--app jobs``)."""

from __future__ import annotations

from datetime import date

from jobtable import Job, register_job


@register_job
class Greet(Job):
    """Say hello."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self) -> str:
        return f"Hello, {self.name}!"


@register_job
class DaysUntil(Job):
    """Count the days until a date (dates round-trip through the queue)."""

    def __init__(self, day: date) -> None:
        self.day = day

    def run(self) -> int:
        return (self.day - date(2026, 1, 1)).days


@register_job
class SyncAccount(Job):
    """One sync per account at a time: a concurrency key."""

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id

    def default_concurrency_key(self) -> str:
        return f"account-{self.account_id}"

    def run(self) -> str:
        return f"synced account {self.account_id}"


@register_job
class Flaky(Job):
    """Fails on its first attempt, succeeds when retried."""

    def default_retries(self) -> int:
        return 2

    def calculate_retry_delay(self, attempt: int) -> int:
        return 0

    def run(self) -> str:
        from pathlib import Path

        marker = Path(__file__).with_name("flaky.attempted")
        if not marker.exists():
            marker.touch()
            raise ConnectionError("the remote service is down (first attempt)")
        marker.unlink()
        return "worked on retry"
