"""Jobs that kill their own worker process (importable by worker processes
as ``--app tests.poison_crash_jobs``).  Each appends a line to a file first,
so tests count how often it really ran."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

from jobtable import Job, register_job
from tests.worker_jobs import Gate, Log, append, lines  # noqa: F401 - registered for the worker

# The member's ledger is the first worker module called after the executor
# returns (the executor itself turns any error into an outcome).
LEDGER_FILE = os.path.join("worker", "ledger.py")


@register_job
class Crash(Job):
    """Kills its process (``how``: "exit" = os._exit, "sigkill") on its first
    ``times`` runs (negative: always), then returns "survived"."""

    def __init__(self, path: str, how: str = "exit", times: int = -1) -> None:
        self.path, self.how, self.times = path, how, times

    def run(self) -> str:
        append(self.path, "ran")
        if self.times < 0 or len(lines(self.path)) <= self.times:
            if self.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(13)
        return "survived"


@register_job
class BreakMember(Job):
    """Returns normally, then makes its pool member die of an uncaught error
    on the way out (the next call into the member's ledger, outside the
    executor's exception handling): what a bug in the worker itself does, in
    a thread member as in a process member."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self) -> str:
        append(self.path, "ran")

        def tracer(frame: FrameType, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.endswith(LEDGER_FILE):
                sys.settrace(None)
                raise RuntimeError("the member breaks")

        sys.settrace(tracer)
        return "returned"


@register_job
class Pid(Job):
    """Appends the pid of the process that runs it to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self) -> int:
        append(self.path, str(os.getpid()))
        return os.getpid()
