"""The Schedules page's view of cron entries.

The entries themselves are defined in code (``jobtable.scheduling``); the
database only keeps each entry's last enqueued slot (``jobtable_schedule``).
This module joins the two and degrades to the database rows alone when the
scheduling API is not available, so the page never fails because of it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from . import queries


@dataclass
class Entry:
    name: str
    job: str = ""
    cron: str = ""
    last_run: datetime | None = None
    next_run: datetime | None = None
    #: The object "run now" enqueues (None: not runnable from here).
    runnable: Any = None
    known: bool = True


def _scheduling() -> Any | None:
    try:
        return importlib.import_module("jobtable.scheduling")
    except ImportError:
        return None


def _code_entries() -> tuple[list[Any], str | None]:
    """Entries defined in code, through whichever listing API the scheduling
    module offers; (entries, note) where note explains an empty result."""
    module = _scheduling()
    if module is None:
        return [], "The scheduling module is not installed; showing the database state only."
    for name in ("list_entries", "entries", "get_entries", "schedule_entries", "load_entries"):
        fn = getattr(module, name, None)
        if callable(fn):
            try:
                return list(fn()), None
            except Exception as exc:  # noqa: BLE001 - a broken schedule must not break the page
                return [], f"Could not list schedule entries: {exc}"
    return [], "This version of jobtable.scheduling has no entry listing; showing the database state only."


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value() if callable(value) and name.startswith("get_") else value
    return None


def entries(conn: Connection, now: datetime) -> tuple[list[Entry], str | None]:
    states = queries.schedule_states(conn)
    code, note = _code_entries()
    out: list[Entry] = []
    for item in code:
        name = str(_attr(item, "name", "key") or item)
        state = states.pop(name, None)
        last = _attr(item, "last_run", "last_slot") or (state.last_slot if state is not None else None)
        next_run = _attr(item, "next_run")
        schedule = _attr(item, "schedule")
        if next_run is None and schedule is not None:
            nxt = getattr(schedule, "next", None)
            if callable(nxt):
                try:
                    next_run = nxt(now)
                except Exception:  # noqa: BLE001
                    next_run = None
        out.append(
            Entry(
                name=name,
                job=str(_attr(item, "job_name", "job_path", "job") or ""),
                cron=str(_attr(item, "cron", "expression", "schedule") or ""),
                last_run=last,
                next_run=next_run if isinstance(next_run, datetime) else None,
                runnable=item if callable(getattr(item, "run_now", None)) or _attr(item, "job") is not None else None,
            )
        )
    # Rows left in the table belong to entries no longer in code.
    for name, state in states.items():
        out.append(Entry(name=name, last_run=state.last_slot, known=False))
    return out, note


def run_now(name: str) -> str:
    """Enqueue entry ``name`` now; returns what was done.  Raises LookupError
    for an unknown entry and RuntimeError when it cannot be run from here."""
    code, note = _code_entries()
    for item in code:
        if str(_attr(item, "name", "key") or item) != name:
            continue
        method = getattr(item, "run_now", None)
        if callable(method):
            method()
            return f"Enqueued {name} now."
        job = _attr(item, "job")
        if job is not None and callable(getattr(job, "run_in_worker", None)):
            job.run_in_worker()
            return f"Enqueued {name} now."
        raise RuntimeError(f"Schedule entry {name} cannot be run from the dashboard.")
    raise LookupError(note or f"No schedule entry named {name}.")
