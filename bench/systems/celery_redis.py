"""Celery 5 on Redis: prefork pool, 2 processes, ignore_result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import harness
from systems.base import System, Unsupported

QUEUE = "bench"


class CeleryBase(System):
    """What every Celery-over-some-broker adapter shares: the app, the tasks,
    the worker command.  Subclasses pick the broker and how to watch it."""

    def __init__(self, backend: str, tmpdir: Path) -> None:
        super().__init__(backend, tmpdir)
        self.app: Any = None

    def broker_url(self) -> str:
        raise NotImplementedError

    def make_app(self) -> None:
        from benchapps.celery_app import make_app

        self.close()
        self.app = make_app(self.broker_url())
        self.noop = self.app.tasks["bench.noop"]
        self.stamp = self.app.tasks["bench.stamp"]

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None

    def enqueue_single(self, n: int) -> None:
        delay = self.noop.delay
        for _ in range(n):
            delay()

    def enqueue_bulk(self, n: int) -> None:
        # Celery has no bulk publish: group().apply_async() still sends one
        # message per task.  Shown as n/a rather than as a second "single".
        raise Unsupported("Celery has no bulk publish")

    def fill(self, n: int) -> None:
        self.enqueue_single(n)

    def send_stamp(self, sent: float) -> None:
        self.stamp.delay(sent)

    def worker_commands(self) -> list[list[str]]:
        return [[harness.venv_bin("celery"), "-A", "benchapps.celery_app", "worker", "--pool", "prefork",
                 "--concurrency", "2", "--queues", QUEUE, "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "--loglevel", "WARNING"]]

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        env["BENCH_BROKER_URL"] = self.broker_url()
        return env


class CeleryRedis(CeleryBase):
    name = "celery+redis"
    backends = ("postgresql",)  # Redis stands in for the database column

    def broker_url(self) -> str:
        return harness.REDIS_URL

    def fresh(self) -> None:
        import redis

        self.redis = redis.Redis.from_url(harness.REDIS_URL)
        self.redis.flushdb()  # our own Redis database number only
        self.make_app()

    def cleanup(self) -> None:
        self.close()
        self.redis.flushdb()

    def server_cpu_seconds(self) -> float | None:
        # The Redis server's process (shared with nobody else's databases here
        # as far as CPU goes: other Redis users would inflate this).
        pid = int(self.redis.info("server")["process_id"])
        return harness._proc_cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")

    def remaining(self) -> int:
        # Waiting messages, plus delivered ones not acked yet (acks_late: the
        # task has not finished).
        pipe = self.redis.pipeline()
        pipe.llen(QUEUE)
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
        return int(waiting) + int(unacked)
