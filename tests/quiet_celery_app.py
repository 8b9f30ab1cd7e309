"""A Celery app logging as a Celery project does by default: the worker
routes the root logger to its log at the level of ``-l`` (no
``worker_hijack_root_logger=False`` as in ``transport_celery_app``), so any
library's INFO line shows.  Broker and result backend: JOBTABLE_DATABASE_URL.

A second module-level use, ``quiet_jobs``: the ``--app`` of ``jobtable
worker`` in the same test, with the root logger at INFO too.
"""

from __future__ import annotations

import logging
import os

from celery import Celery

import jobtable
from jobtable import Job, register_job

URL = os.environ["JOBTABLE_DATABASE_URL"]

app = Celery("jt_quiet", broker="jobtable+" + URL, backend="jobtable+" + URL)
app.conf.update(
    task_default_queue=os.environ.get("JT_QUEUE", "quiet_tests"),
    broker_connection_retry_on_startup=False,
    broker_transport_options={"polling_interval": 0.5, "fallback_polling_interval": 0.02},
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@register_job
class QuietJob(Job):
    def run(self) -> None:
        logging.getLogger("tests.quiet").info("quiet job ran")


if os.environ.get("JT_ROOT_INFO"):
    # As an application that configures logging for itself would.
    logging.basicConfig(level=logging.INFO, format="ROOT %(name)s %(message)s")

__all__ = ["app", "add", "QuietJob", "jobtable"]
