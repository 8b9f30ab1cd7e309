"""A Celery app whose broker and result backend URLs carry a password, for
the tests that look for it in everything Celery shows.

Environment: JT_BROKER_URL (a jobtable+ URL, ";"-separated alternates
allowed), JT_BACKEND_URL, JT_RECORD (a file the task appends to).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready

import jobtable  # noqa: F401  (registers the jobtable+ broker URLs with Kombu)

app = Celery("jt_secret", broker=os.environ["JT_BROKER_URL"], backend=os.environ["JT_BACKEND_URL"])
app.conf.update(
    broker_transport_options={"polling_interval": 0.5, "lease_seconds": 5, "eta_interval": 0.05},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue="secret_tests",
)


def _record(line: str) -> None:
    with open(os.environ["JT_RECORD"], "a") as f:
        f.write(line + "\n")


@worker_ready.connect
def _ready(**_: object) -> None:
    _record(f"READY {os.getpid()}")


@app.task
def add(x: int, y: int) -> int:
    _record(f"add {x} {y}")
    return x + y
