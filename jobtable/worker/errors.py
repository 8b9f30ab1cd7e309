"""Exceptions a job (or the worker) raises to steer an attempt."""

from __future__ import annotations

from datetime import timedelta


class DeferJob(Exception):
    """Raise inside ``run()`` to run the job again later (a DEFERRED result).

    ``increment_retries=False`` (the default): the deferral does not use up
    one of the job's retries.  True: it counts as one, and a job without
    retries left is recorded ERRORED instead.
    """

    def __init__(self, *, delay: int | float | timedelta, increment_retries: bool = False) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError(f"DeferJob(delay={delay!r}): the delay must be 0 or more seconds.")
        super().__init__(f"deferred for {seconds:g} s")
        self.delay = seconds
        self.increment_retries = increment_retries


class JobTimeout(BaseException):
    """Raised inside a job that ran past its timeout.

    A BaseException, so that the job's own ``except Exception`` cannot
    swallow it.
    """

