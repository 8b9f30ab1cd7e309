"""The Schedules page's view of cron entries.

The entries are defined in code (``jobtable.scheduling.schedule_entries()``:
JOBTABLE_SCHEDULE and ``schedule`` attributes of registered jobs); the
database only keeps each entry's last enqueued slot (``jobtable_schedule``).
This module joins the two.  A broken schedule setting shows as a note on the
page, with the database rows alone, rather than failing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..exceptions import JobtableError
from . import queries


@dataclass
class Entry:
    name: str
    job: str = ""
    cron: str = ""
    last_run: datetime | None = None
    next_run: datetime | None = None
    #: False for a ledger row whose entry is no longer in code.
    known: bool = True

    @property
    def runnable(self) -> bool:
        return self.known


def _code_entries() -> tuple[list[Any], str | None]:
    """(entries, note): the note explains an empty or partial listing."""
    try:
        from ..scheduling import schedule_entries
    except ImportError as exc:  # pragma: no cover - only with a partial install
        return [], f"Scheduling is unavailable ({exc}); showing the database state only."
    try:
        return list(schedule_entries()), None
    except (JobtableError, ValueError) as exc:
        return [], f"The schedule setting is invalid: {exc}"


def entries(conn: Connection, now: datetime) -> tuple[list[Entry], str | None]:
    states = queries.schedule_states(conn)
    code, note = _code_entries()
    out: list[Entry] = []
    for item in code:
        state = states.pop(item.name, None)
        try:
            next_run: datetime | None = item.schedule.next(now)
        except Exception:  # noqa: BLE001 - an unreachable slot shows as "-"
            next_run = None
        out.append(
            Entry(
                name=item.name,
                job=item.label,
                cron=str(item.schedule),
                last_run=state.last_slot if state is not None else None,
                next_run=next_run,
            )
        )
    # Rows left in the table belong to entries no longer in code.
    for name, state in states.items():
        out.append(Entry(name=name, last_run=state.last_slot, known=False))
    return out, note


def run_now(name: str) -> str:
    """Enqueue entry ``name`` now, outside its schedule (its ledger is left
    alone, so the next slot still fires).  Raises LookupError for an unknown
    entry and RuntimeError when the job's concurrency key is taken."""
    code, note = _code_entries()
    for item in code:
        if item.name != name:
            continue
        request = item.job.run_in_worker()
        if request is None:
            raise RuntimeError("not enqueued: a job with the same concurrency key is waiting or running")
        return f"{name} (enqueued as {request.uuid})"
    raise LookupError(note or f"no schedule entry is named {name!r}")
