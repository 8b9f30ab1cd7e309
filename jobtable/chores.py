"""Chores: routine maintenance functions, run with ``jobtable chores run``.

::

    # app/chores.py -- imported automatically (so is {pkg}/chores.py of
    # every package in JOBTABLE_PACKAGES)
    from jobtable.chores import Chore, register_chore

    @register_chore("sessions")
    def clear_expired():
        \"\"\"Delete sessions that have expired.\"\"\"
        return f"{n} expired sessions deleted"

    @register_chore("reports")
    class RebuildIndex(Chore):
        \"\"\"Rebuild the search index.\"\"\"
        def run(self):
            ...

The docstring is the description, the return value is printed.  A chore's
name is ``group.function_name`` (or ``group.ClassName``).  Good chores are
fast, idempotent, recurring and stateless; run them on deploy, from cron,
or hourly as a scheduled job (``["jobtable.chores.RunChores", "0 * * * *"]``
in JOBTABLE_SCHEDULE).
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

from .exceptions import JobtableError
from .jobs import Job
from .registry import register_job

T = TypeVar("T")

#: Results deleted per transaction by the built-in chore: short transactions
#: that never hold locks the workers wait on for long.
CLEAR_BATCH = 500


class UnknownChore(JobtableError, LookupError):
    """A chore name that no ``@register_chore`` registered."""


class Chore:
    """Class form of a chore: subclass, implement ``run()``, decorate with
    ``@register_chore("group")``.  The class docstring is the description."""

    def run(self) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must implement run().")


@dataclass(frozen=True)
class RegisteredChore:
    name: str
    group: str
    description: str
    target: Callable[[], Any] | type[Chore]

    def run(self) -> Any:
        if isinstance(self.target, type):
            return self.target().run()
        return self.target()


class ChoresRegistry:
    def __init__(self) -> None:
        self.chores: dict[str, RegisteredChore] = {}

    def register(self, target: Any, group: str) -> RegisteredChore:
        if isinstance(target, type):
            if not issubclass(target, Chore):
                raise TypeError(f"@register_chore on a class needs a Chore subclass; {target.__qualname__} is not.")
        elif not callable(target):
            raise TypeError(f"@register_chore decorates a function or a Chore subclass, not {target!r}.")
        if not isinstance(group, str) or not group:
            raise TypeError(f"A chore group is a non-empty string, e.g. @register_chore('sessions'); got {group!r}.")
        chore = RegisteredChore(
            name=f"{group}.{target.__name__}",
            group=group,
            description=inspect.cleandoc(target.__doc__ or "").strip(),
            target=target,
        )
        # Re-importing a module (reload, tests) replaces the chore.
        self.chores[chore.name] = chore
        return chore

    def all(self) -> list[RegisteredChore]:
        return [self.chores[name] for name in sorted(self.chores)]

    def select(self, names: Sequence[str] = (), groups: Sequence[str] = ()) -> list[RegisteredChore]:
        """Chores named in ``names`` or in ``groups`` (everything when both are empty)."""
        unknown = [n for n in names if n not in self.chores]
        if unknown:
            known = ", ".join(sorted(self.chores)) or "none registered"
            raise UnknownChore(f"No chore is named {', '.join(map(repr, unknown))}. Chores: {known}.")
        known_groups = {c.group for c in self.chores.values()}
        missing = [g for g in groups if g not in known_groups]
        if missing:
            raise UnknownChore(
                f"No chore group {', '.join(map(repr, missing))}. Groups: {', '.join(sorted(known_groups)) or 'none'}."
            )
        if not names and not groups:
            return self.all()
        return [c for c in self.all() if c.name in names or c.group in groups]


chores_registry = ChoresRegistry()


@overload
def register_chore(group: str) -> Callable[[T], T]: ...
@overload
def register_chore(group: T) -> T: ...
def register_chore(group: Any) -> Any:
    """``@register_chore("group")`` on a function or a Chore subclass.

    Bare ``@register_chore`` uses the top-level package of the module as group.
    """
    if not isinstance(group, str):
        target = group
        chores_registry.register(target, target.__module__.split(".")[0])
        return target

    def decorator(target: T) -> T:
        chores_registry.register(target, group)
        return target

    return decorator


# -- running -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChoreOutcome:
    chore: RegisteredChore
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def run_chore(chore: RegisteredChore) -> ChoreOutcome:
    """Run one chore, catching its failure (the others must still run)."""
    started = time.perf_counter()
    try:
        value = chore.run()
    except Exception as exc:
        return ChoreOutcome(chore, error=exc, traceback=traceback.format_exc(), seconds=time.perf_counter() - started)
    return ChoreOutcome(chore, value=value, seconds=time.perf_counter() - started)


def run_chores(chores: Iterable[RegisteredChore]) -> list[ChoreOutcome]:
    return [run_chore(chore) for chore in chores]


@register_job
class RunChores(Job):
    """Runs chores from the worker (all of them, or those in ``names``);
    fails, after running every one, if any failed."""

    def __init__(self, names: list[str] | None = None) -> None:
        self.names = list(names or [])

    def run(self) -> dict[str, Any]:
        from .discovery import load_app

        load_app()  # chores.py modules may not be imported in the worker yet
        outcomes = run_chores(chores_registry.select(self.names))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            details = "\n".join(f"{o.chore.name}: {o.traceback}" for o in failed)
            raise RuntimeError(f"{len(failed)} of {len(outcomes)} chore(s) failed:\n{details}")
        return {o.chore.name: None if o.value is None else str(o.value) for o in outcomes}


# -- built-in chores ----------------------------------------------------------------


@register_chore("jobtable")
def clear_results() -> str:
    """Delete job results older than JOBTABLE_RESULTS_RETENTION seconds."""
    from .db import engine as db_engine
    from .db import clock, operations_sql
    from .settings import get_settings

    retention = get_settings().results_retention
    before = clock.utcnow() - timedelta(seconds=retention)
    total = 0
    while True:
        with db_engine.connect() as conn, conn.begin():
            deleted = operations_sql.clear_results(conn, before, batch=CLEAR_BATCH)
        total += deleted
        if deleted < CLEAR_BATCH:
            return f"{total} result(s) older than {retention} seconds deleted"
