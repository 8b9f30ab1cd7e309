"""A Celery worker consuming a routed queue from RabbitMQ (tests/test_routing.py):
the Jobs of tests.worker_jobs registered with ``register_jobs``, results in
jobtable's result backend.  Environment: JOBTABLE_DATABASE_URL, JT_ROUTED_QUEUE,
JT_RECORD (a READY line once the worker consumes)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

import tests.worker_jobs  # noqa: F401 - registers the Jobs
from jobtable.routing.publish import QUEUE_ARGUMENTS
from jobtable.shim.celery_jobs import register_jobs
from tests.routing_support import AMQP_URL

url = os.environ["JOBTABLE_DATABASE_URL"]
queue = os.environ["JT_ROUTED_QUEUE"]
app = Celery("jt_routed", broker=AMQP_URL, backend="jobtable+" + url)
app.conf.update(
    # Declared as jobtable declares it (a quorum queue): RabbitMQ refuses a
    # second declaration with other arguments.
    task_queues=[Queue(queue, routing_key=queue, durable=True, queue_arguments=dict(QUEUE_ARGUMENTS))],
    task_default_queue=queue,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@worker_ready.connect
def _ready(**_: Any) -> None:
    with open(os.environ["JT_RECORD"], "a") as f:
        f.write(f"READY {os.getpid()}\n")


register_jobs(app, schedules=False)
