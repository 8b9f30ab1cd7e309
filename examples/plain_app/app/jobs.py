"""The app's jobs (Plain's ``plain.jobs`` API)."""

from __future__ import annotations

from pathlib import Path

from jobtable import Job, register_job
from jobtable.scheduling import Schedule

STATE = Path(__file__).resolve().parent.parent / "state"


@register_job
class SendWelcomeEmail(Job):
    """One welcome email per user at a time: a concurrency key."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def default_concurrency_key(self) -> str:
        return f"welcome-{self.user_id}"

    def run(self) -> str:
        return f"welcome email sent to user {self.user_id}"


@register_job
class ImportFeed(Job):
    """Retries: the feed's server fails the first request."""

    def __init__(self, url: str) -> None:
        self.url = url

    def default_retries(self) -> int:
        return 2

    def calculate_retry_delay(self, attempt: int) -> int:
        return 0  # at once (the default backs off exponentially)

    def run(self) -> str:
        marker = STATE / "feed.tried"
        if not marker.exists():
            marker.touch()
            raise ConnectionError(f"{self.url}: 503 Service Unavailable")
        return f"imported 12 items from {self.url}"


@register_job
class RebuildSearchIndex(Job):
    """``should_enqueue``: a rebuild already waiting covers any change made
    before it runs, so a second one is not enqueued (checked atomically with
    the insert)."""

    def default_queue(self) -> str:
        return "slow"

    def should_enqueue(self, concurrency_key: str) -> bool:
        return not self.get_requested_jobs().exists()

    def run(self) -> str:
        return "search index rebuilt"


@register_job
class SendDigest(Job):
    """Scheduled in pyproject.toml ([tool.jobtable] schedule), weekdays at 8."""

    def run(self) -> str:
        return "digest sent"


@register_job
class PurgeTrash(Job):
    """Scheduled with a class attribute instead."""

    schedule = Schedule.from_cron("@daily")

    def run(self) -> str:
        return "trash purged"
