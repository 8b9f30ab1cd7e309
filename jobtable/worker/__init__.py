"""The native worker: ``jobtable worker``.

A supervisor forks N pool members (or starts N threads).  Each member claims
batches of jobs, runs them and writes their results in batches; the
supervisor heartbeats for its members, restarts one that dies and records
its running job LOST.  See ``main.py`` (supervisor), ``duties.py`` (its
timed duties) and ``process.py`` (member loop).
"""

from __future__ import annotations

from .errors import DeferJob, JobTimeout

__all__ = ["DeferJob", "JobTimeout"]
