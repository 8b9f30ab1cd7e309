"""A Celery app whose broker and result backend are jobtable, for the result
backend tests.  Environment: JOBTABLE_DATABASE_URL."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

import jobtable  # noqa: F401  (registers the jobtable+ broker URLs with Kombu)

URL = "jobtable+" + os.environ["JOBTABLE_DATABASE_URL"]

app = Celery("jt_backend", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"polling_interval": 0.5, "lease_seconds": 5, "eta_interval": 0.05},
    broker_connection_retry_on_startup=True,
    result_extended=True,
    task_track_started=True,
    worker_hijack_root_logger=False,
    result_chord_join_timeout=10,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task
def explode(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True, max_retries=3)
def retry_twice(self: Any) -> int:
    if self.request.retries < 2:
        raise self.retry(countdown=0, exc=ConnectionError(f"attempt {self.request.retries + 1} failed"))
    return self.request.retries


@app.task
def wait_for_file(path: str) -> str:
    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


@app.task
def poison(kind: str) -> object:
    """Results hostile to a result row (tests/test_poison_results.py)."""
    if kind == "nul-error":
        raise ValueError("before\x00after")
    if kind == "surrogate-error":
        raise ValueError("lone \ud800")
    if kind == "huge-error":
        raise ValueError("x" * (20 * 1024 * 1024))
    if kind == "refuse-me":
        raise ValueError("please refuse-me")
    return "nul\x00 return"
