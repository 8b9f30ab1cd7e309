"""Jobs with their own limits per concurrency key (should_enqueue overridden)
and their own enqueue lock; importable by child processes and workers as
``tests.limit_jobs``."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, contextmanager
from collections.abc import Iterator

from jobtable import Job, register_job

REDIS_URL = "redis://127.0.0.1:6379/0"


@register_job
class ThreePerKey(Job):
    """At most three waiting or running jobs per key."""

    def __init__(self, key: str, path: str = "") -> None:
        self.key = key
        self.path = path

    def default_concurrency_key(self) -> str:
        return self.key

    def should_enqueue(self, concurrency_key: str) -> bool:
        return self.count_active_jobs(concurrency_key) < 3

    def run(self) -> str:
        return self.key


@register_job
class FivePerMinute(Job):
    """At most five enqueues per key in any 60 seconds, finished or not."""

    def __init__(self, key: str) -> None:
        self.key = key

    def default_concurrency_key(self) -> str:
        return self.key

    def should_enqueue(self, concurrency_key: str) -> bool:
        return self.count_recent_jobs(concurrency_key, seconds=60) < 5

    def run(self) -> None:
        return None


@register_job
class FailsFirstThreePerKey(ThreePerKey):
    """Fails its first attempt (its ``path`` does not exist yet), then
    succeeds: one retry, at once."""

    def default_retries(self) -> int:
        return 1

    def run(self) -> str:
        if not os.path.exists(self.path):
            with open(self.path, "w") as f:
                f.write("failed once")
            raise RuntimeError("first attempt fails")
        return self.key


@register_job
class RedisLockedThreePerKey(ThreePerKey):
    """Three per key, serialised by a Redis lock instead of the database's.

    Inside the lock it records in Redis how many enqueues hold it at once
    (``inside``, which must never exceed 1) and how many took it
    (``acquired``): the race test checks both.
    """

    def get_enqueue_lock(self, concurrency_key: str) -> AbstractContextManager[object]:
        return _redis_lock(f"jobtable-test:{self.job_name()}:{concurrency_key}")

    def should_enqueue(self, concurrency_key: str) -> bool:
        client = _client()
        prefix = f"jobtable-test:{concurrency_key}"
        inside = client.incr(f"{prefix}:inside")
        try:
            client.incr(f"{prefix}:acquired")
            if inside != 1:
                client.incr(f"{prefix}:overlaps")
            return super().should_enqueue(concurrency_key)
        finally:
            client.decr(f"{prefix}:inside")


def _client():  # type: ignore[no-untyped-def]
    import redis

    # A new client per call: the racing processes are forked.
    return redis.Redis.from_url(REDIS_URL)


@contextmanager
def _redis_lock(name: str) -> Iterator[None]:
    # As in the README: redis-py's Lock, expiring after 30 s if its holder
    # dies, waiting at most 30 s for it.
    with _client().lock(name, timeout=30, blocking_timeout=30):
        yield
