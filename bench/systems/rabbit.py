"""A queue routed to RabbitMQ (issue 18): jobtable's native worker on a
routed queue vs Celery's prefork pool on the same RabbitMQ, same no-op job,
both on a durable quorum queue named ``bench`` (what jobtable declares; the
Celery app declares it the same way with BENCH_CELERY_QUORUM=1).

Done-ness: jobtable writes a result row per job before it acks, so
``remaining`` is jobs sent minus result rows.  Celery ignores results here:
``remaining`` is the broker's ready count (a passive queue_declare), which
misses the at most 2 x 4 prefetched no-ops still unacked when it reaches 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import harness
from systems.celery_redis import QUEUE, CeleryBase
from systems.jobtable_native import JobtableNative

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _delete_queue(declare: bool = True) -> None:
    """Start empty: the queue deleted, then declared again as both systems
    declare it (a quorum queue bound to the exchange Celery publishes to),
    so that no publisher's cache of declared queues can miss it."""
    from kombu import Connection, Exchange, Queue

    with Connection(AMQP_URL) as conn:
        try:
            conn.channel().queue_delete(QUEUE)
        except Exception:
            pass
        if declare:
            Queue(QUEUE, Exchange(QUEUE, "direct"), routing_key=QUEUE, durable=True,
                  queue_arguments={"x-queue-type": "quorum"}).declare(channel=conn.channel())


def _ready() -> int:
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=QUEUE, passive=True).message_count)
        except Exception:
            return 0


class JobtableRouted(JobtableNative):
    name = "jobtable+rabbitmq"
    backends = ("postgresql",)
    #: Its own database: results only (the jobs are in RabbitMQ).
    pg_database = "bench_jobtable_routed"

    def fresh(self) -> None:
        import jobtable
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        harness.create_pg_database(self.pg_database)
        self.url = harness.pg_url(self.pg_database)
        os.environ["JOBTABLE_DATABASE_URL"] = self.url
        jobtable.configure(database_url=self.url)
        upgrade(db_engine.get_engine())
        import benchapps.jobtable_jobs  # noqa: F401  (registers Noop and Stamp)

        routes = {QUEUE: AMQP_URL}
        os.environ["JOBTABLE_BROKER_ROUTES"] = json.dumps(routes)
        jobtable.configure(broker_routes=routes)
        _delete_queue()
        self.sent = 0

    def cleanup(self) -> None:
        os.environ.pop("JOBTABLE_BROKER_ROUTES", None)
        _delete_queue(declare=False)
        self.close()
        harness.drop_pg_database(self.pg_database)

    def enqueue_single(self, n: int) -> None:
        super().enqueue_single(n)
        self.sent += n

    def enqueue_bulk(self, n: int, batch: int = 10_000) -> None:
        super().enqueue_bulk(n, batch)
        self.sent += n

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        env["JOBTABLE_BROKER_ROUTES"] = json.dumps({QUEUE: AMQP_URL})
        return env

    def remaining(self) -> int:
        return self.sent - self.results()

    @property
    def time_claim(self) -> None:  # type: ignore[override]
        # The claim scenario measures the table's claim: not this system's.
        raise AttributeError("time_claim")


class CeleryRabbit(CeleryBase):
    name = "celery+rabbitmq"
    backends = ("postgresql",)  # RabbitMQ stands in for the database column

    def broker_url(self) -> str:
        return AMQP_URL

    def fresh(self) -> None:
        os.environ["BENCH_CELERY_QUORUM"] = "1"
        _delete_queue()
        self.make_app()

    def cleanup(self) -> None:
        self.close()
        _delete_queue(declare=False)

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        env["BENCH_CELERY_QUORUM"] = "1"
        return env

    def remaining(self) -> int:
        return _ready()
