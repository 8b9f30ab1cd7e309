"""``crontab``, interval schedules and ``beat_schedule`` entries as jobtable
schedules.

Each beat entry becomes a ``(job, Schedule)`` pair of JOBTABLE_SCHEDULE: the
job is the task's ``TaskJob`` with the entry's arguments, so jobtable's
scheduler enqueues each slot once across all workers.  What differs from
celery beat:

- an interval (``timedelta``, seconds, ``schedule(run_every=...)``) is
  aligned on the clock, not "every N since beat started": one that divides
  an hour or a day evenly becomes a cron schedule (``timedelta(minutes=15)``
  runs at :00, :15, :30, :45), any other whole number of seconds, 1 or more,
  a ``Schedule.every`` on slots aligned on the epoch (5 s runs at :00, :05,
  :10...); each slot still runs once across all workers;
- a crontab with *both* ``day_of_month`` and ``day_of_week`` restricted means
  "both match" in Celery but "either matches" in cron: it is refused;
- while an entry's previous run is still waiting or running, its next slot
  is skipped (jobtable's per-entry concurrency key), which is what
  ``options={"expires": ...}`` is usually there for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ..cron import CronError
from ..scheduling import Schedule
from .current import App
from .exceptions import NotSupported
from .registry import registry
from .task import Task, TaskJob

logger = logging.getLogger("jobtable.shim")

_DAY_NAMES = {
    "sunday": "sun",
    "monday": "mon",
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
}


def _field(name: str, value: Any) -> str:
    """One cron field from Celery's forms: ``"*/15"``, ``0``, ``{1, 2}``, ``"mon-fri"``."""
    if isinstance(value, bool):
        raise CronError(f"crontab({name}={value!r}): use a number, a string such as '*/15', or a set of numbers.")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (set, frozenset, list, tuple, range)):
        items = sorted(value)
        if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise CronError(f"crontab({name}={value!r}): a collection must hold numbers.")
        return ",".join(map(str, items))
    if not isinstance(value, str) or not value.strip():
        raise CronError(f"crontab({name}={value!r}): use a number, a string such as '*/15', or a set of numbers.")
    text = "".join(value.split()).lower()
    if name == "day_of_week":
        for full, short in _DAY_NAMES.items():
            text = text.replace(full, short)
    return text


class crontab:  # noqa: N801  (Celery's name)
    """Celery's ``crontab(minute=, hour=, day_of_week=, day_of_month=,
    month_of_year=)``: fields are cron fields."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - {"nowfun", "app", "tz"}
        if unknown:
            raise TypeError(f"crontab() got unexpected arguments: {', '.join(sorted(unknown))}.")
        self.minute = _field("minute", minute)
        self.hour = _field("hour", hour)
        self.day_of_week = _field("day_of_week", day_of_week)
        self.day_of_month = _field("day_of_month", day_of_month)
        self.month_of_year = _field("month_of_year", month_of_year)
        self.tz = kwargs.get("tz")
        if not self.day_of_week.startswith("*") and not self.day_of_month.startswith("*"):
            raise NotSupported(
                f"crontab(day_of_week={self.day_of_week!r}, day_of_month={self.day_of_month!r})",
                "Celery runs it on days matching both fields, cron on days matching either. Restrict one "
                "field and check the other at the start of the task.",
            )
        Schedule.from_cron(self.cron)  # a bad field fails here, with cron's message

    @property
    def cron(self) -> str:
        return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week}"

    def schedule(self, timezone: Any = None) -> Schedule:
        return Schedule.from_cron(self.cron, timezone=self.tz or timezone)

    def __repr__(self) -> str:
        return f"<crontab: {self.cron}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other.cron == self.cron

    def __hash__(self) -> int:
        return hash(self.cron)


class schedule:  # noqa: N801  (Celery's celery.schedules.schedule)
    """An interval: ``schedule(run_every=timedelta(minutes=5))``."""

    def __init__(self, run_every: float | timedelta, relative: bool = False, **kwargs: Any) -> None:
        if relative:
            raise NotSupported("schedule(relative=True)", "Intervals are aligned on the clock in jobtable.")
        self.run_every = run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every)

    @property
    def cron(self) -> str:
        return interval_to_cron(self.run_every)

    def __repr__(self) -> str:
        return f"<freq: {self.run_every}>"


def interval_to_cron(every: float | timedelta) -> str:
    """The clock-aligned cron string of an interval, or NotSupported."""
    seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
    alternative = (
        "jobtable schedules are cron (minute resolution, aligned on the clock): use an interval that divides "
        "an hour (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 minutes) or a day (1, 2, 3, 4, 6, 8, 12 hours), 1 day, "
        "7 days, or a crontab(...)."
    )
    if seconds <= 0 or seconds % 60:
        raise NotSupported(f"the interval {every!r} ({seconds:g} s)", alternative)
    minutes = int(seconds // 60)
    if minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 == 0:
        hours = minutes // 60
        if hours < 24 and 24 % hours == 0:
            return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
        if hours == 24:
            return "0 0 * * *"
        if hours == 24 * 7:
            return "0 0 * * 0"
    raise NotSupported(f"the interval {every!r}", alternative)


def interval_schedule(every: float | timedelta, timezone: Any = None) -> Schedule:
    """An interval as a jobtable Schedule: a clock-aligned cron when one says
    it (15 minutes: ``*/15 * * * *``), else ``Schedule.every`` (whole
    seconds, 1 or more, aligned on the epoch: 5 s, 10 s, 90 s, 7 minutes)."""
    try:
        return Schedule.from_cron(interval_to_cron(every), timezone=timezone)
    except NotSupported:
        pass
    try:
        return Schedule.every(every, timezone=timezone)
    except CronError:
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        raise NotSupported(
            f"the interval {every!r} ({seconds!r} s)",
            "Intervals are whole seconds, 1 or more (timedelta(seconds=5), 5, 90.0), or a crontab(...).",
        ) from None


def to_schedule(value: Any, timezone: Any = None) -> Schedule:
    """A beat entry's ``schedule`` as a jobtable Schedule."""
    if isinstance(value, crontab):
        return value.schedule(timezone)
    if isinstance(value, schedule):
        return interval_schedule(value.run_every, timezone)
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return interval_schedule(value, timezone)
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        return Schedule.from_cron(value, timezone=timezone)
    raise NotSupported(
        f"the beat schedule {value!r}",
        "Use crontab(...), a timedelta, a number of seconds, or a cron string (solar schedules are not supported).",
    )


class UnknownBeatTask(NotSupported):
    """A beat entry names a task no loaded module defines (yet: the app
    resolves such entries again once its tasks are discovered)."""


#: Beat entry options used, and those accepted without effect.
_ENTRY_OPTIONS = {"queue", "priority"}
_IGNORED_ENTRY_OPTIONS = {"expires", "ignore_result"}


def beat_entries(beat_schedule: dict[str, Any], app: App) -> list[tuple[Any, Schedule]]:
    """``(job, Schedule)`` pairs of the entries of a ``beat_schedule`` dict."""
    pairs: list[tuple[Any, Schedule]] = []
    for key, entry in beat_schedule.items():
        if not isinstance(entry, dict) or "task" not in entry or "schedule" not in entry:
            raise NotSupported(
                f"the beat_schedule entry {key!r}",
                "Each entry is a dict with 'task' and 'schedule' (and 'args', 'kwargs', 'options').",
            )
        unknown = set(entry) - {"task", "schedule", "args", "kwargs", "options", "relative"}
        if unknown or entry.get("relative"):
            raise NotSupported(
                f"beat_schedule[{key!r}] keys {sorted(unknown or {'relative'})}",
                "Supported: task, schedule, args, kwargs, options (queue, priority).",
            )
        options = dict(entry.get("options") or {})
        bad = set(options) - _ENTRY_OPTIONS - _IGNORED_ENTRY_OPTIONS
        if bad:
            raise NotSupported(
                f"beat_schedule[{key!r}]['options'] {sorted(bad)}",
                "Scheduled tasks take queue and priority options; set others on the task.",
            )
        task = registry.find(str(entry["task"]))
        if not isinstance(task, Task):  # None: unknown (every registered task is a Task)
            raise UnknownBeatTask(
                f"beat_schedule[{key!r}] for the unknown task {entry['task']!r}",
                "No module the app imports or discovers defines it: fix the entry's 'task' (Celery's name is "
                "module.function, or the task's name=), add its module to autodiscover_tasks/include, or remove "
                "the entry.",
            )
        try:
            when = to_schedule(entry["schedule"], timezone=app.conf.timezone)
        except CronError as exc:
            raise CronError(f"beat_schedule[{key!r}]: {exc}") from None
        job = task.job_class(*tuple(entry.get("args") or ()), **dict(entry.get("kwargs") or {}))
        job._entry_options = {k: v for k, v in options.items() if k in _ENTRY_OPTIONS}
        pairs.append((job, when))
    return pairs


def _is_shim_pair(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], TaskJob)


def install(pairs: Iterable[tuple[Any, Schedule]]) -> None:
    """Make ``pairs`` the shim's part of JOBTABLE_SCHEDULE (other entries are kept)."""
    from .. import settings

    pairs = list(pairs)
    current = settings.get_settings()
    kept = [item for item in current.schedule if not _is_shim_pair(item)]
    settings.configure(schedule=[*kept, *pairs])
    if pairs and not any(_is_shim_pair(item) for item in settings.get_settings().schedule):
        from ..exceptions import ConfigurationError

        raise ConfigurationError(
            "The JOBTABLE_SCHEDULE environment variable overrides app.conf.beat_schedule. Unset it, or move its "
            "entries into beat_schedule (or jobtable.configure(schedule=[...]))."
        )
