"""Start and end lines of the kill/restart scenario's jobs (``bench/killrestart.py``).

Every job appends ``S <token> <time.time()> <pid>`` before its work and
``E <token> <time.time()> <pid>`` after it to the file named by
``BENCH_RUNS_FILE``.  Each line is one short O_APPEND write: atomic across
processes, and in the page cache the moment ``write`` returns, so a SIGKILL
right after it cannot take it back.  The scenario counts runs from these
lines alone -- independently of what the queue recorded.
"""

from __future__ import annotations

import os
import time


def mark(kind: str, token: str) -> None:
    fd = os.open(os.environ["BENCH_RUNS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {token} {time.time()!r} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def work(token: str, ms: float) -> None:
    """What each job does: mark its start, sleep ``ms`` milliseconds, mark its end."""
    mark("S", token)
    if ms > 0:
        time.sleep(ms / 1000)
    mark("E", token)
