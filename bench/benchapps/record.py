"""What a latency job does: append "<sent> <started> <pid>" to the file named
by BENCH_LATENCY_FILE.  One short O_APPEND write is atomic, so every worker
process can share the file; it costs microseconds and touches no database, so
it does not disturb the system under test."""

from __future__ import annotations

import os
import time


def record(sent: float) -> None:
    started = time.time()
    fd = os.open(os.environ["BENCH_LATENCY_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{float(sent)!r} {started!r} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
