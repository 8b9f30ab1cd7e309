"""A Celery app on the jobtable transport for the multi-host tests
(tests/test_multihost_kombu.py): each namespace host runs a real ``celery
worker`` on it, reaching the database across its own link.

Environment: JOBTABLE_DATABASE_URL (the broker database as this host
reaches it).  Tasks append ``start TAG HOST EPOCH`` / ``end TAG HOST EPOCH``
lines (tests/netns_jobs.append) to a file every host can write.
"""

from __future__ import annotations

import os
import socket
import time

from celery import Celery

from tests.netns_jobs import append

QUEUE = "multihost_kombu"
#: Short leases so a cut-off consumer's messages come back within seconds;
#: a third of them is the renewal period, and the outage grace is capped
#: at that too.
TRANSPORT_OPTIONS = {"lease_seconds": 6, "polling_interval": 0.2, "outage_grace": 1, "connect_timeout": 2}

app = Celery("netns_celery", broker="jobtable+" + os.environ.get("JOBTABLE_DATABASE_URL", "sqlite://"))
app.conf.update(
    broker_transport_options=TRANSPORT_OPTIONS,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a cut-off host keeps trying until healed
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
)


@app.task(name="netns.mark")
def mark(path: str, tag: str) -> str:
    host = socket.gethostname()
    append(path, "start", tag, host, f"{time.time():.3f}")
    append(path, "end", tag, host, f"{time.time():.3f}")
    return host


@app.task(name="netns.hold")
def hold(path: str, tag: str, release_dir: str) -> str:
    """Runs until the file ``release_dir/<this host>`` exists."""
    host = socket.gethostname()
    append(path, "start", tag, host, f"{time.time():.3f}")
    release = os.path.join(release_dir, host)
    while not os.path.exists(release):
        time.sleep(0.01)
    append(path, "end", tag, host, f"{time.time():.3f}")
    return host
