"""The Celery app of the kill/restart scenario: Celery over jobtable's Kombu
transport, ``task_acks_late`` on (``celery -A benchapps.kill_celery_app worker``
with BENCH_BROKER_URL set).

``bench.work`` is the same work as the native ``Work`` job (``runlog``).
With ``acks_late`` a message leaves the broker only after its task ran, and
``task_reject_on_worker_lost`` makes a task whose pool process died go back
to the queue, as the native job's retries do; a killed worker's unacked
messages come back through the transport's consumer liveness check.
"""

from __future__ import annotations

import os

from celery import Celery

import jobtable  # noqa: F401  (registers the jobtable transport alias with Kombu)

from .runlog import work


def make_app(broker_url: str) -> Celery:
    app = Celery("killbench", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="bench",
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # 4 as in the other Celery runs; BENCH_PREFETCH=1 for Celery's advice
        # with acks_late (hold only what runs).
        worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.work")
    def work_task(token: str, ms: float) -> None:
        work(token, ms)

    return app


app = make_app(os.environ.get("BENCH_BROKER_URL", "jobtable+postgresql+psycopg://postgres@127.0.0.1:5439/bench_kill"))
