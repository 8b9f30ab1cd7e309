"""Jobs of the register_jobs tests (tests/test_celery_jobs.py), run by a
native worker (``jobtable --app tests.celery_jobs_jobs worker``) and by a
Celery worker (``celery -A tests.celery_jobs_app worker``) alike.  No Celery
import here: the native worker loads this module only.

Each run appends one line ``tag attempt retries key`` (what ``current_job()``
says) to the file ``path``, so a test sees every attempt the Job saw."""

from __future__ import annotations

import os
import time
from typing import Any

from jobtable import Job, register_job
from jobtable.middleware import current_job
from jobtable.worker import DeferJob

#: The queue of these tests: no other test's worker takes it.
QUEUE = "celery_jobs"


def note(path: str, tag: str) -> int:
    """Append what this attempt is; returns its attempt number."""
    run = current_job()
    assert run is not None, "current_job() is None inside run()"
    line = f"{tag} {run.attempt} {run.retries} {run.concurrency_key or '-'}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return run.attempt


class NotYet(Exception):
    """A failure of these Jobs (one text argument: the same text whichever
    worker records it; a builtin's type is named differently by Celery)."""


class _Base(Job):
    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def default_queue(self) -> str:
        return QUEUE


@register_job
class FailsTwice(_Base):
    """Fails attempts 1 and 2 (0.2 s, then 0.4 s before the next), succeeds on 3."""

    def default_retries(self) -> int:
        return 3

    def calculate_retry_delay(self, attempt: int) -> float:
        return 0.2 * attempt

    def run(self) -> str:
        if note(self.path, self.tag) < 3:
            raise NotYet(f"{self.tag} not yet")
        return self.tag


@register_job
class AlwaysFails(_Base):
    """One retry, then it has failed for good."""

    def default_retries(self) -> int:
        return 1

    def run(self) -> None:
        note(self.path, self.tag)
        raise NotYet(f"{self.tag} always")


@register_job
class DefersTwice(_Base):
    """Defers attempts 1 and 2 by 0.2 s (no retry used up), then succeeds."""

    def run(self) -> str:
        if note(self.path, self.tag) < 3:
            raise DeferJob(delay=0.2)
        return self.tag


@register_job
class DefersCounted(_Base):
    """Defers counting a retry; with one retry, the second deferral fails it."""

    def default_retries(self) -> int:
        return 1

    def run(self) -> None:
        note(self.path, self.tag)
        raise DeferJob(delay=0.1, increment_retries=True)


@register_job
class KeyedDefer(_Base):
    """Holds the key ``kd-<tag>``; attempt 1 defers for ``delay`` seconds."""

    def __init__(self, path: str, tag: str, delay: float = 2.0) -> None:
        super().__init__(path, tag)
        self.delay = delay

    def default_concurrency_key(self) -> str:
        return f"kd-{self.tag}"

    def run(self) -> str:
        if note(self.path, self.tag) == 1:
            raise DeferJob(delay=self.delay)
        return self.tag


@register_job
class KeyedRetry(_Base):
    """Holds the key ``kr-<tag>``; attempt 1 fails, retried after 2 s."""

    def default_concurrency_key(self) -> str:
        return f"kr-{self.tag}"

    def default_retries(self) -> int:
        return 1

    def calculate_retry_delay(self, attempt: int) -> float:
        return 2.0

    def run(self) -> str:
        if note(self.path, self.tag) == 1:
            raise NotYet("first attempt fails")
        return self.tag


@register_job
class HostileDefer(_Base):
    """Raises ``DeferJob(delay=kind)`` with a delay that is no time (nan,
    inf, 1e300): the DeferJob cannot be made, so the attempt fails with
    the error naming it, on both workers (it used to be ERRORED on the
    native worker and retried at once under Celery)."""

    def __init__(self, path: str, tag: str, kind: str) -> None:
        super().__init__(path, tag)
        self.kind = kind

    def run(self) -> str:
        note(self.path, self.tag)
        raise DeferJob(delay={"nan": float("nan"), "inf": float("inf"), "huge": 1e300}[self.kind])


@register_job
class HostileDelay(_Base):
    """``calculate_retry_delay`` returns ``kind`` (nan, inf, huge, negative,
    a string, or raises): the retry happens at once, on both workers."""

    def __init__(self, path: str, tag: str, kind: str) -> None:
        super().__init__(path, tag)
        self.kind = kind

    def default_retries(self) -> int:
        return 1

    def calculate_retry_delay(self, attempt: int) -> Any:
        values: dict[str, Any] = {
            "nan": float("nan"), "inf": float("inf"), "huge": 1e300, "negative": -5, "text": "soon",
        }
        if self.kind == "raises":
            raise ZeroDivisionError("no delay for you")
        return values[self.kind]

    def run(self) -> str:
        if note(self.path, self.tag) == 1:
            raise NotYet("first attempt fails")
        return self.tag


@register_job
class Sleeps(_Base):
    """Runs until cancelled (at most a minute)."""

    def run(self) -> None:
        note(self.path, self.tag)
        time.sleep(60)
