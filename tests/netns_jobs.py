"""Jobs of the multi-host tests (tests/test_multihost.py): each run appends
a line naming the host that ran it (``socket.gethostname()``: each
namespace host has its own) to a file every host can write.

Lines: ``start TAG HOST EPOCH`` and ``end TAG HOST EPOCH``; a ``Hold``
stopped from outside (a cancel, a rescue learned) writes ``stopped ...``.
``EPOCH`` is the host's wall clock (not skewed in the tests that read it).
"""

from __future__ import annotations

import os
import socket
import time

from jobtable import Job, register_job
from jobtable.scheduling import Schedule


def append(path: str, *words: object) -> None:
    line = " ".join(str(w) for w in words) + "\n"
    # One write of a line shorter than PIPE_BUF with O_APPEND: lines of
    # concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def lines(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []


@register_job
class Mark(Job):
    """Start line, ``seconds`` of sleep, end line."""

    def __init__(self, path: str, tag: str, seconds: float = 0.0) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def run(self) -> str:
        host = socket.gethostname()
        append(self.path, "start", self.tag, host, f"{time.time():.3f}")
        if self.seconds:
            time.sleep(self.seconds)
        append(self.path, "end", self.tag, host, f"{time.time():.3f}")
        return host


@register_job
class Hold(Job):
    """Runs until the file ``release`` exists (or it is stopped)."""

    def __init__(self, path: str, tag: str, release: str) -> None:
        self.path, self.tag, self.release = path, tag, release

    def default_timeout(self) -> int:
        return 120

    def run(self) -> str:
        host = socket.gethostname()
        append(self.path, "start", self.tag, host, f"{time.time():.3f}")
        try:
            while not os.path.exists(self.release):
                time.sleep(0.01)
        except BaseException as exc:
            append(self.path, "stopped", self.tag, host, f"{time.time():.3f}", type(exc).__name__)
            raise
        append(self.path, "end", self.tag, host, f"{time.time():.3f}")
        return host


TICK_LOG = "NETNS_TICK_LOG"


@register_job
class Tick(Job):
    """Scheduled every second when the host's environment names a log
    (``NETNS_TICK_LOG``): one line per run."""

    schedule = Schedule.every(1) if os.environ.get(TICK_LOG) else None

    def run(self) -> str:
        host = socket.gethostname()
        append(os.environ[TICK_LOG], "tick", host)
        return host
