"""Jobs used by the tests; importable by child processes as tests.sample_jobs."""

from __future__ import annotations

from typing import Any

from jobtable import Job, register_job


@register_job
class Echo(Job):
    """Returns its arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def run(self) -> Any:
        return {"args": list(self.args), "kwargs": self.kwargs}


@register_job
class Keyed(Job):
    """Deduplicated by its key."""

    def __init__(self, key: str) -> None:
        self.key = key

    def default_concurrency_key(self) -> str:
        return self.key

    def run(self) -> None:
        return None


@register_job
class AtMostTwo(Job):
    """should_enqueue lets at most two requests of a key wait."""

    def __init__(self, key: str) -> None:
        self.key = key

    def should_enqueue(self, concurrency_key: str) -> bool:
        return self.get_requested_jobs().count() < 2

    def run(self) -> None:
        return None


@register_job(alias="old.name.Renamed")
class Renamed(Job):
    def run(self) -> str:
        return "renamed"


@register_job
class LegacyWorkerJob(Job):
    """Written for plain.worker: the get_* names."""

    def get_queue(self) -> str:
        return "legacy"

    def get_priority(self) -> int:
        return 7

    def get_retries(self) -> int:
        return 2

    def get_retry_delay(self, attempt: int) -> int:
        return 10 * attempt

    def get_unique_key(self) -> str:
        return "legacy-key"

    def run(self) -> str:
        return "legacy"


@register_job
class Fails(Job):
    def run(self) -> None:
        raise ValueError("boom")
