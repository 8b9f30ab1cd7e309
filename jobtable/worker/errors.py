"""Exceptions a job (or the worker) raises to steer an attempt."""

from __future__ import annotations

# DeferJob is part of the Job API; re-exported here for the worker's imports.
from ..jobs import DeferJob

__all__ = ["DeferJob", "JobTimeout"]


class JobTimeout(BaseException):
    """Raised inside a job that ran past its timeout.

    A BaseException, so that the job's own ``except Exception`` cannot
    swallow it.
    """

