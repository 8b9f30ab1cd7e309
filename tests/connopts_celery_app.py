"""A Celery app whose broker is JT_BROKER_URL, with the connection options
of the environment: JT_CONNECTION_TIMEOUT (broker_connection_timeout),
JT_TRANSPORT_TIMEOUT (broker_transport_options['connect_timeout'])."""

from __future__ import annotations

import os

from celery import Celery

import jobtable  # noqa: F401  (the broker alias also where the .pth hook is not installed)

app = Celery("jt_connopts", broker=os.environ["JT_BROKER_URL"])
app.conf.update(
    task_default_queue="connopts_tests",
    # Retries on: only then does Celery log why it cannot connect.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=1,
    task_ignore_result=True,
)
if os.environ.get("JT_CONNECTION_TIMEOUT"):
    app.conf.broker_connection_timeout = float(os.environ["JT_CONNECTION_TIMEOUT"])
if os.environ.get("JT_TRANSPORT_TIMEOUT"):
    app.conf.broker_transport_options = {"connect_timeout": float(os.environ["JT_TRANSPORT_TIMEOUT"])}


@app.task
def ping() -> str:
    return "pong"
