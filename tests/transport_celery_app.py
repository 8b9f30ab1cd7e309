"""A Celery app on the jobtable broker, for tests that start real workers.

Environment: JOBTABLE_DATABASE_URL (the broker database), JT_RECORD (a file
where tasks append one line per run).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

import jobtable
from jobtable import Job, register_job
from jobtable.shim.celery_jobs import register_jobs

from tests.transport_helpers import FAST_OPTIONS

QUEUE = "transport_tests"

app = Celery("jt_test", broker="jobtable+" + os.environ["JOBTABLE_DATABASE_URL"])
app.conf.update(
    # JT_TRANSPORT_OPTIONS (JSON): a test's own options on top of the fast ones.
    broker_transport_options={**FAST_OPTIONS, **json.loads(os.environ.get("JT_TRANSPORT_OPTIONS", "{}"))},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=True,
    # Celery gives event messages a 5 s TTL; on a loaded machine a buffered
    # task-received event can outlive it and be dropped by the broker (as
    # RabbitMQ would drop it).
    event_queue_ttl=120,
    task_default_priority=0,
    worker_prefetch_multiplier=int(os.environ.get("JT_PREFETCH", "4")),
    # Not "celery": other tests' workers on the same database must not
    # take these messages.
    task_default_queue=QUEUE,
)


def record(*parts: Any) -> None:
    line = " ".join(str(p) for p in parts) + "\n"
    with open(os.environ["JT_RECORD"], "a") as f:
        f.write(line)


@worker_ready.connect
def _ready(**_: Any) -> None:
    record("READY", os.getpid())


@app.task
def note(tag: str) -> None:
    record("note", tag)


@app.task(bind=True, max_retries=5)
def flaky(self: Any, tag: str, failures: int) -> None:
    if self.request.retries < failures:
        record("retry", tag, self.request.retries)
        raise self.retry(countdown=0.2)
    record("flaky", tag, self.request.retries)


@app.task
def slow(tag: str, seconds: float) -> None:
    time.sleep(seconds)
    record("slow", tag)


@app.task
def gated(tag: str, gate: str) -> None:
    """Runs until the file ``gate`` exists (at most a minute)."""
    record("started", tag)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    record("gated", tag)


@app.task(acks_late=True)
def gated_late(tag: str, gate: str) -> None:
    """``gated``, acked after it returns: a worker killed while running it
    still holds its message."""
    gated(tag, gate)


@app.task(acks_late=True)
def die(tag: str) -> None:
    """Kills the process running it (in the solo pool: the consumer)."""
    record("died", tag)
    os._exit(1)


@register_job
class RecordJob(Job):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def run(self) -> None:
        record("job", self.tag)


register_jobs(app)
assert jobtable
