"""The ``jobtable`` command.  Each module here adds one group of commands to
the click group of ``group.py``; this module only assembles them."""

from __future__ import annotations

from . import chores, dashboard, queue, schedule, worker  # noqa: F401  (each registers its commands)
from .group import JobtableGroup, main, with_app

__all__ = ["JobtableGroup", "main", "with_app"]
