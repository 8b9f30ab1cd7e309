"""The Celery app, for every broker: the URL picks Redis, jobtable's Kombu
transport or Kombu's SQLAlchemy transport.  Workers run
``celery -A benchapps.celery_app worker`` with BENCH_BROKER_URL set; the
harness builds its own app per broker with ``make_app``."""

from __future__ import annotations

import os

from celery import Celery

from .record import record


def make_app(broker_url: str) -> Celery:
    if broker_url.startswith("jobtable+"):
        import jobtable  # noqa: F401  (registers the jobtable transport alias with Kombu)

    app = Celery("bench", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="bench",
        task_serializer="json",
        accept_content=["json"],
        # Ack after the task ran: a message leaves the broker only once its
        # task is done, so the harness sees "done" by watching the broker
        # alone.  Same number of broker operations as early acks.
        task_acks_late=True,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if os.environ.get("BENCH_CELERY_QUORUM") == "1":
        # As jobtable declares a routed queue (bench/systems/rabbit.py).
        from kombu import Queue

        app.conf.task_queues = [Queue("bench", routing_key="bench", queue_arguments={"x-queue-type": "quorum"})]
    if os.environ.get("BENCH_TRANSPORT_OPTIONS"):
        import json

        app.conf.broker_transport_options = json.loads(os.environ["BENCH_TRANSPORT_OPTIONS"])

    @app.task(name="bench.noop")
    def noop() -> None:
        pass

    @app.task(name="bench.stamp")
    def stamp(sent: float) -> None:
        record(sent)

    return app


app = make_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"))
