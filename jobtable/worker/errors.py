"""Exceptions a job (or the worker) raises to steer an attempt."""

from __future__ import annotations

# DeferJob is part of the Job API; re-exported here for the worker's imports.
from ..jobs import DeferJob

__all__ = ["DeferJob", "JobCancelled", "JobTimeout"]


class JobTimeout(BaseException):
    """Raised inside a job that ran past its timeout.

    A BaseException, so that the job's own ``except Exception`` cannot
    swallow it.
    """



class JobCancelled(BaseException):
    """Raised inside a running job that was cancelled (``request.cancel()``,
    the dashboard, ``revoke(terminate=True)``: worker/cancels.py).

    A BaseException for the same reason as ``JobTimeout``; a job that needs
    to clean up can catch it (``finally`` runs), and is killed if it does
    not end within the worker's timeout grace.
    """
