"""The dashboard's actions by name: what each does, to which kind of row,
and how it asks.  Below the pages (a notice names a done action's verb) and
the POST handler in actions.py that runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from ..exceptions import JobtableError
from . import formatting, queries, revokes, schedules


@dataclass(frozen=True)
class Action:
    verb: str
    #: What the ids are: "result", "request", "schedule" or "task" (a task id).
    kind: str
    question: str
    danger: bool
    run: Callable[[Connection, list[Any]], queries.ActionReport]


def _schedule_run(conn: Connection, names: list[Any]) -> queries.ActionReport:
    report = queries.ActionReport()
    for name in names:
        try:
            report.done.append(schedules.run_now(str(name)))
        except (LookupError, RuntimeError, JobtableError) as exc:
            report.skipped.append(f"{name}: {exc}")
    return report


ACTIONS: dict[str, Action] = {
    "retry": Action(
        "Retry",
        "result",
        "Enqueue the next attempt of these jobs?",
        False,
        lambda conn, ids: queries.retry_results(conn, ids, formatting.utcnow()),
    ),
    "cancel": Action(
        "Cancel",
        "request",
        "Cancel these jobs? Waiting ones are recorded CANCELLED now; running ones are stopped by "
        "their native worker within a second and recorded CANCELLED.",
        True,
        lambda conn, ids: queries.cancel_requests(conn, ids, formatting.utcnow()),
    ),
    "revoke": Action(
        "Revoke",
        "request",
        "Revoke these tasks? Waiting ones are recorded REVOKED; no worker, native or Celery, "
        "runs their id until the revoke expires (3 hours, as Celery's) or is undone.",
        True,
        lambda conn, ids: revokes.revoke_requests(conn, ids, formatting.utcnow()),
    ),
    "unrevoke": Action(
        "Un-revoke",
        "task",
        "Un-revoke these task ids? Messages with them that have not yet been claimed will run.",
        False,
        revokes.unrevoke_tasks,
    ),
    "delete-requests": Action(
        "Delete",
        "request",
        "Delete these waiting jobs without recording a result?",
        True,
        queries.delete_requests,
    ),
    "delete-results": Action(
        "Delete",
        "result",
        "Delete these results? Their history is lost.",
        True,
        queries.delete_results,
    ),
    "run-now": Action(
        "Run now",
        "request",
        "Make these scheduled jobs due now?",
        False,
        lambda conn, ids: queries.run_requests_now(conn, ids, formatting.utcnow()),
    ),
    "run-schedule": Action(
        "Run now",
        "schedule",
        "Enqueue these scheduled jobs now, outside their schedule?",
        False,
        _schedule_run,
    ),
}
