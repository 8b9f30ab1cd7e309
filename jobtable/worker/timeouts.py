"""Stopping a job that runs past its timeout.

Processes pool: SIGALRM (``setitimer``) raises ``JobTimeout`` inside the job's
Python code; a job stuck in C code past timeout + grace is killed by the
supervisor (recorded LOST).  Threads pool: the supervisor raises
``JobTimeout`` in the job's thread (``PyThreadState_SetAsyncExc``), which
Python code notices at its next bytecode; blocking C calls finish first.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from types import FrameType

from .errors import JobTimeout


class AlarmTimeout:
    """Per-job SIGALRM timer; main thread of a pool process only."""

    def __init__(self) -> None:
        self._armed = False
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        # The alarm may land just after the job returned: raise only while armed.
        if self._armed:
            self._armed = False
            raise JobTimeout()

    def arm(self, seconds: float) -> None:
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))

    def disarm(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


class NoTimeout:
    """Threads pool: the supervisor enforces deadlines (``raise_in_thread``)."""

    def arm(self, seconds: float) -> None:
        pass

    def disarm(self) -> None:
        pass


def raise_in_thread(thread: threading.Thread, exc_type: type[BaseException] = JobTimeout) -> bool:
    """Raise ``exc_type`` in ``thread`` at its next bytecode."""
    ident = thread.ident
    if ident is None:
        return False
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    return bool(changed == 1)
