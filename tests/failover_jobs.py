"""Jobs and the enqueuing host of the failover tests (tests/test_failover.py).

``Step`` appends ``ran TAG PID EPOCH`` to a file every process can write (one
``write`` of a short line with O_APPEND: concurrent lines never interleave).

Run as a module it is the enqueuer: ``python -m tests.failover_jobs OUT
PATH COUNT`` enqueues COUNT jobs, alternately a ``Step`` through
``run_in_worker`` and a Celery task through the Kombu transport
(``tests.transport_celery_app.note``), and writes ``ok TAG EPOCH`` to OUT for each
enqueue that returned (committed) and ``failed TAG EPOCH ERROR`` for each that
raised -- carrying on, never restarted, across the failover.
"""

from __future__ import annotations

import os
import sys
import time

from jobtable import Job, register_job


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@register_job
class Step(Job):
    def __init__(self, path: str, tag: str, seconds: float = 0.0) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def run(self) -> None:
        if self.seconds:
            time.sleep(self.seconds)
        append(self.path, f"ran {self.tag} {os.getpid()} {time.time():.3f}")


def enqueue(out: str, path: str, count: int) -> None:
    from tests.transport_celery_app import note

    for i in range(count):
        tag = f"e{i}"
        try:
            if i % 2:
                note.delay(tag)
            else:
                Step(path, tag).run_in_worker()
        except Exception as exc:  # the gap of the failover: carry on
            append(out, f"failed {tag} {time.time():.3f} {type(exc).__name__}")
        else:
            append(out, f"ok {tag} {time.time():.3f}")
        # Paced, so that the enqueues span the failover.
        time.sleep(0.02)
    append(out, "done")


if __name__ == "__main__":
    # Through the module's own name: a Step of __main__ would be enqueued as
    # "__main__.Step", a job no worker knows.
    from tests.failover_jobs import enqueue as enqueue_jobs

    enqueue_jobs(sys.argv[1], sys.argv[2], int(sys.argv[3]))
