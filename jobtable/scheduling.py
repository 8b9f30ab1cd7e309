"""Schedules: cron expressions in a time zone, and the entries that use them.

``Schedule.from_cron("0 9 * * *")`` is a point in wall-clock time that recurs;
``next(after)`` and ``previous(before)`` turn it into instants.  Jobs get one
through a ``schedule = Schedule...`` class attribute or a ``JOBTABLE_SCHEDULE``
entry; the scheduler (``jobtable.scheduler``) enqueues each due slot once.

Time zones and DST
------------------
Wall times are read in the schedule's time zone: the one given to
``from_cron(..., timezone=)``, else ``JOBTABLE_SCHEDULE_TIMEZONE`` (UTC by
default).  Across DST changes:

- schedules whose hour field is ``*`` (every hour) follow the clock: a
  skipped wall time does not run, and a repeated hour runs twice, so "every
  15 minutes" stays every 15 minutes of real time;
- other schedules run once per matching wall time: one that does not exist
  (spring forward, e.g. 02:30 in Europe/Berlin on the last Sunday of March)
  runs when the gap ends (03:00), several skipped ones run once; one that
  exists twice (fall back) runs at its first occurrence only.

This is Vixie cron's behaviour, and croniter's except that croniter runs a
fixed-time schedule twice on the night the clocks fall back: so croniter is
only asked for naive wall times (``cron.py``), and this module maps them to
instants.
"""

from __future__ import annotations

import hashlib
import math
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .cron import CronError, CronExpression
from .exceptions import ConfigurationError
from .jobs import Job
from .registry import jobs_registry, register_job
from .setting_rules import safe_repr, safe_str

__all__ = ["CronError", "Schedule", "ScheduleEntry", "ScheduledCommand", "schedule_entries", "load_schedule"]

UTC = dt_timezone.utc

#: Longer than any DST shift in the tz database (2 hours, Antarctica/Troll).
_SLACK = timedelta(hours=3)


def resolve_timezone(value: str | tzinfo | None) -> tzinfo:
    """A tzinfo from an IANA name (``"Europe/Berlin"``), a tzinfo, or None
    (the ``JOBTABLE_SCHEDULE_TIMEZONE`` setting)."""
    if value is None:
        from .settings import get_settings

        value = get_settings().schedule_timezone
    if isinstance(value, tzinfo):
        return value
    if value.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"Unknown time zone {value!r}. Use an IANA name such as 'UTC', 'Europe/Berlin' or "
            "'America/New_York' (JOBTABLE_SCHEDULE_TIMEZONE, or Schedule.from_cron(..., timezone=...))."
        ) from None


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}={value!r} is a naive datetime: pass an aware one, e.g. datetime.now(timezone.utc).")
    return value


class Schedule:
    """A cron schedule in a time zone.

    ``Schedule.from_cron("0 9 * * *")``, ``Schedule.from_cron("@daily",
    timezone="Europe/Berlin")`` or ``Schedule(minute="0", hour="9")``.
    """

    def __init__(
        self,
        *,
        minute: str = "*",
        hour: str = "*",
        day_of_month: str = "*",
        month: str = "*",
        day_of_week: str = "*",
        raw: str | None = None,
        timezone: str | tzinfo | None = None,
    ) -> None:
        # raw="" is an empty (invalid) expression, not "every minute".
        fields = f"{minute} {hour} {day_of_month} {month} {day_of_week}"
        self.cron = CronExpression.parse(fields if raw is None else raw)
        self.raw = self.cron.text
        self.timezone = timezone
        if timezone is not None:
            resolve_timezone(timezone)  # fail at definition time, not at the first tick

    @classmethod
    def from_cron(cls, cron: str, timezone: str | tzinfo | None = None) -> Schedule:
        """Parse a five-field cron string or an ``@daily``-style shortcut."""
        if isinstance(cron, Schedule):
            return cron
        if not isinstance(cron, str):
            raise CronError(f"A schedule is a cron string such as '0 9 * * *' or a Schedule; got {cron!r}.")
        return cls(raw=cron, timezone=timezone)

    @classmethod
    def every(cls, seconds: float | timedelta, timezone: str | tzinfo | None = None) -> Schedule:
        """Every ``seconds`` (whole seconds, 1 or more), on slots aligned on
        the epoch: ``Schedule.every(10)``, ``Schedule.every(timedelta(seconds=90))``."""
        return Interval(seconds, timezone=timezone)

    @property
    def tz(self) -> tzinfo:
        return resolve_timezone(self.timezone)

    def __str__(self) -> str:
        if self.timezone is None:
            return self.raw
        name = self.timezone if isinstance(self.timezone, str) else str(self.timezone)
        return f"{self.raw} ({name})"

    def __repr__(self) -> str:
        tz = f", timezone={self.timezone!r}" if self.timezone is not None else ""
        return f"Schedule.from_cron({self.raw!r}{tz})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.cron.minutes, self.cron.hours, self.cron.days, self.cron.months, self.cron.weekdays,
                self.cron.day_or, str(self.timezone)) == (
                other.cron.minutes, other.cron.hours, other.cron.days, other.cron.months, other.cron.weekdays,
                other.cron.day_or, str(other.timezone))

    def __hash__(self) -> int:
        return hash((self.cron.minutes, self.cron.hours, self.cron.days, self.cron.months, self.cron.weekdays))

    # -- wall times -> instants -----------------------------------------------------------

    def _instants(self, wall: datetime, tz: tzinfo) -> list[datetime]:
        """The UTC instants at which the matching wall time ``wall`` runs."""
        first = wall.replace(tzinfo=tz).astimezone(UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if first.astimezone(tz).replace(tzinfo=None) == wall:
            # Exists twice (fall back): the first one, and the second too when
            # the schedule runs every hour.
            return [first, second] if self.cron.every_hour else [first]
        # Does not exist (spring forward).  An every-hour schedule follows the
        # clock, which skipped it; any other runs when the gap ends.  fold=1
        # reads the wall time with the later offset, which lands before the
        # transition; fold=0 with the earlier one, after it.
        if self.cron.every_hour:
            return []
        return [_transition(tz, second, first)]

    def next(self, after: datetime | None = None) -> datetime:
        """The first run strictly after ``after`` (default: now), aware, in
        the schedule's time zone."""
        tz = self.tz
        after_utc = _aware(after, "after").astimezone(UTC) if after is not None else datetime.now(UTC)
        local = after_utc.astimezone(tz)
        start = local.replace(tzinfo=None)
        # A clock about to fall back: earlier wall times may still come later.
        if _offset(tz, after_utc + _SLACK) < local.utcoffset():  # type: ignore[operator]
            start -= _SLACK
        wall = self.cron.next_after(start - timedelta(minutes=1))
        best: datetime | None = None
        while True:
            for instant in self._instants(wall, tz):
                if instant > after_utc and (best is None or instant < best):
                    best = instant
            if best is not None:
                best_wall = best.astimezone(tz).replace(tzinfo=None)
                # Later wall times map to earlier instants only just after a
                # fall-back transition.
                slack = _SLACK if _offset(tz, best - _SLACK) > _offset(tz, best) else timedelta(0)
                if wall >= best_wall + slack:
                    return best.astimezone(tz)
            wall = self.cron.next_after(wall)

    def previous(self, before: datetime | None = None) -> datetime:
        """The last run strictly before ``before`` (default: now), aware, in
        the schedule's time zone."""
        tz = self.tz
        before_utc = _aware(before, "before").astimezone(UTC) if before is not None else datetime.now(UTC)
        local = before_utc.astimezone(tz)
        start = local.replace(tzinfo=None)
        # The clock just fell back: later wall times may have come earlier.
        if _offset(tz, before_utc - _SLACK) > local.utcoffset():  # type: ignore[operator]
            start += _SLACK
        wall = self.cron.previous_before(start + timedelta(minutes=1))
        best: datetime | None = None
        while True:
            for instant in self._instants(wall, tz):
                if instant < before_utc and (best is None or instant > best):
                    best = instant
            if best is not None:
                best_wall = best.astimezone(tz).replace(tzinfo=None)
                slack = _SLACK if _offset(tz, best + _SLACK) < _offset(tz, best) else timedelta(0)
                if wall <= best_wall - slack:
                    return best.astimezone(tz)
            wall = self.cron.previous_before(wall)

    def latest(self, now: datetime) -> datetime:
        """The last run at or before ``now``."""
        return self.previous(_aware(now, "now") + timedelta(microseconds=1))


class Interval(Schedule):
    """Every ``seconds`` seconds (a whole number, 1 or more), on slots aligned
    on the Unix epoch: ``Schedule.every(10)`` runs at :00, :10, :20... of
    every minute, whatever the time zone.  What cron cannot say (intervals
    under a minute, 90 s, 7 minutes); each slot still fires once across all
    workers (the scheduler's ledger)."""

    def __init__(self, seconds: Any, timezone: str | tzinfo | None = None) -> None:
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise CronError(f"Schedule.every({seconds!r}): give a number of seconds (a whole number, 1 or more).")
        if seconds < 1 or seconds != int(seconds):
            raise CronError(
                f"Schedule.every({seconds!r}): intervals are whole seconds, 1 or more (the scheduler ticks "
                "about once a second)."
            )
        self.seconds = int(seconds)
        self.raw = f"every {self.seconds}s"
        self.timezone = timezone
        if timezone is not None:
            resolve_timezone(timezone)

    def __repr__(self) -> str:
        return f"Schedule.every({self.seconds})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return isinstance(other, Interval) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(("every", self.seconds))

    def _slot(self, instant: datetime, what: str) -> tuple[int, float]:
        stamp = _aware(instant, what).timestamp()
        return int(stamp // self.seconds) * self.seconds, stamp

    def next(self, after: datetime | None = None) -> datetime:
        slot, _ = self._slot(after if after is not None else datetime.now(UTC), "after")
        return datetime.fromtimestamp(slot + self.seconds, UTC).astimezone(self.tz)

    def previous(self, before: datetime | None = None) -> datetime:
        slot, stamp = self._slot(before if before is not None else datetime.now(UTC), "before")
        if slot >= stamp:  # exactly on a slot: strictly before
            slot -= self.seconds
        return datetime.fromtimestamp(slot, UTC).astimezone(self.tz)


def _offset(tz: tzinfo, instant: datetime) -> timedelta:
    return instant.astimezone(tz).utcoffset()  # type: ignore[return-value]


def _transition(tz: tzinfo, lo: datetime, hi: datetime) -> datetime:
    """The first instant in (lo, hi] whose offset differs from lo's."""
    before = _offset(tz, lo)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid <= lo:
            mid = lo + timedelta(seconds=1)
        if _offset(tz, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


# -- shell commands -----------------------------------------------------------------------

#: Characters of a command's output kept in its result.
OUTPUT_LIMIT = 10_000


class CommandFailed(Exception):
    """A scheduled shell command exited with a non-zero status."""


@register_job
class ScheduledCommand(Job):
    """Runs a ``"cmd:..."`` entry of JOBTABLE_SCHEDULE through the shell.

    Security: the command runs with ``shell=True`` as the worker's user.  It
    only runs if it is, at run time, a ``cmd:`` entry of the worker's own
    JOBTABLE_SCHEDULE: a row written to the queue table (or an enqueue from
    anywhere) cannot make workers run an arbitrary command.  Whoever can
    change the settings can still run anything -- treat JOBTABLE_SCHEDULE
    like a crontab.
    """

    def __init__(self, command: str) -> None:
        self.command = command

    def default_queue(self) -> str:
        return "default"

    def run(self) -> dict[str, Any]:
        if self.command not in configured_commands():
            raise PermissionError(
                f"Refusing to run {self.command!r}: it is not a 'cmd:' entry of this worker's JOBTABLE_SCHEDULE. "
                "Add it there to schedule it."
            )
        completed = subprocess.run(
            self.command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        output = completed.stdout[-OUTPUT_LIMIT:]
        if completed.returncode != 0:
            raise CommandFailed(f"{self.command!r} exited with status {completed.returncode}: {output}")
        return {"command": self.command, "exit_status": completed.returncode, "output": output}


def configured_commands() -> set[str]:
    """The shell commands of JOBTABLE_SCHEDULE's ``cmd:`` entries (read
    without importing the other entries' jobs)."""
    from .settings import get_settings

    commands = set()
    for item in get_settings().schedule:
        job = item[0] if isinstance(item, (list, tuple)) and item else None
        if isinstance(job, str) and job.startswith("cmd:"):
            commands.add(job[len("cmd:") :].strip())
        elif isinstance(job, ScheduledCommand):
            commands.add(job.command)
    return commands


# -- entries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleEntry:
    """One scheduled job: what to enqueue and when.

    ``name`` identifies the entry's ledger row in ``jobtable_schedule``.  It
    includes the schedule, so changing an entry's cron makes a new entry
    (starting with its next slot) and the old row is pruned.
    """

    name: str
    job: Job
    schedule: Schedule

    @property
    def label(self) -> str:
        """The job part of the name."""
        return _job_label(self.job)


def _job_label(job: Job) -> str:
    if isinstance(job, ScheduledCommand):
        return f"cmd:{job.command}"
    label = job.job_name()
    if job._init_args or job._init_kwargs:
        from .job_rows import encode_arguments

        args, kwargs = encode_arguments(job)
        parts = [json.dumps(a, sort_keys=True) for a in args]
        parts += [f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(kwargs.items())]
        label += f"({', '.join(parts)})"
    return label


#: Longest ledger name (the column is VARCHAR(255)).
MAX_NAME = 255


def entry_name(job: Job, schedule: Schedule) -> str:
    name = f"{_job_label(job)} [{schedule}]"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = f"{name[: MAX_NAME - 17]}~{digest}"
    return name


def _import_job(path: str) -> Job:
    from .exceptions import UnknownJob

    if path in jobs_registry:
        job_class: Any = jobs_registry.get(path)
    else:
        module_name, _, attr = path.rpartition(".")
        try:
            import importlib

            job_class = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # the module itself may fail (SyntaxError, NameError...)
            raise ConfigurationError(
                f"JOBTABLE_SCHEDULE entry {path!r}: cannot import it ({safe_str(exc)}). Give the dotted path of a "
                "registered Job class, e.g. 'app.jobs.DailyReport', or 'cmd:<shell command>'."
            ) from None
    if not (isinstance(job_class, type) and issubclass(job_class, Job)):
        raise ConfigurationError(f"JOBTABLE_SCHEDULE entry {path!r} is not a Job class.")
    try:
        jobs_registry.name_of(job_class)
    except UnknownJob as exc:
        raise ConfigurationError(f"JOBTABLE_SCHEDULE entry {path!r}: {exc}") from None
    try:
        return job_class()
    except TypeError as exc:
        raise ConfigurationError(
            f"JOBTABLE_SCHEDULE entry {path!r}: {job_class.__qualname__}() needs arguments ({exc}). "
            "Put an instance in the entry instead, e.g. (MyJob(42), '0 9 * * *') in jobtable.configure(schedule=...)."
        ) from None


def _entry(item: Any) -> ScheduleEntry:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise ConfigurationError(
            f"JOBTABLE_SCHEDULE entries are [job, schedule] pairs, e.g. ['app.jobs.DailyReport', '0 9 * * *'] "
            f"or ['cmd:./backup.sh', '@daily']; got {safe_repr(item)}."
        )
    job, schedule = item
    if isinstance(job, str):
        if job.startswith("cmd:"):
            command = job[len("cmd:") :].strip()
            if not command:
                raise ConfigurationError(
                    f"JOBTABLE_SCHEDULE entry {safe_repr(item)}: 'cmd:' needs a shell command after it."
                )
            job = ScheduledCommand(command)
        else:
            job = _import_job(job)
    elif not isinstance(job, Job):
        raise ConfigurationError(
            f"JOBTABLE_SCHEDULE entry {safe_repr(item)}: the job must be a dotted path, 'cmd:...', or a Job instance."
        )
    if isinstance(schedule, str):
        try:
            schedule = Schedule.from_cron(schedule)
        except CronError as exc:
            raise CronError(f"JOBTABLE_SCHEDULE entry for {_job_label(job)!r}: {exc}") from None
    elif not isinstance(schedule, Schedule):
        raise ConfigurationError(
            f"JOBTABLE_SCHEDULE entry {safe_repr(item)}: the schedule must be a cron string or a Schedule."
        )
    return ScheduleEntry(entry_name(job, schedule), job, schedule)


def load_schedule(items: Iterable[Any] | None = None) -> list[ScheduleEntry]:
    """Entries of JOBTABLE_SCHEDULE (or of ``items``)."""
    if items is None:
        from .settings import get_settings

        items = get_settings().schedule
    entries = []
    for index, item in enumerate(items, 1):
        try:
            entries.append(_entry(item))
        except ConfigurationError:
            raise
        except Exception as exc:  # a job whose arguments cannot be encoded, a failing import...
            raise ConfigurationError(
                f"JOBTABLE_SCHEDULE entry {index} ({safe_repr(item)}) cannot be loaded: {safe_str(exc)}. "
                "Fix the entry or remove it."
            ) from exc
    return entries


def class_entries() -> list[ScheduleEntry]:
    """Entries of registered jobs that have a ``schedule`` class attribute."""
    entries = []
    for name in jobs_registry.names():
        job_class = jobs_registry.get(name)
        schedule = getattr(job_class, "schedule", None)
        if schedule is None:
            continue
        if isinstance(schedule, str):
            try:
                schedule = Schedule.from_cron(schedule)
            except CronError as exc:
                raise CronError(f"{name}.schedule: {exc}") from None
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(
                f"{name}.schedule must be a Schedule, e.g. schedule = Schedule.from_cron('0 9 * * *'); "
                f"got {safe_repr(schedule)}."
            )
        if not issubclass(job_class, Job):
            # The registry holds jobbase.BaseJob classes; only a Job can be enqueued.
            raise ConfigurationError(f"{name} has a schedule but is not a jobtable.Job subclass.")
        try:
            job = job_class()
        except TypeError as exc:
            raise ConfigurationError(
                f"{name} has a schedule but {job_class.__qualname__}() needs arguments ({exc}). "
                "Give the arguments defaults, or schedule an instance through JOBTABLE_SCHEDULE."
            ) from None
        except Exception as exc:
            raise ConfigurationError(
                f"{name} has a schedule but {job_class.__qualname__}() failed ({safe_str(exc)}); "
                "fix it or remove the schedule."
            ) from exc
        entries.append(ScheduleEntry(entry_name(job, schedule), job, schedule))
    return entries


def schedule_entries(items: Iterable[Any] | None = None) -> list[ScheduleEntry]:
    """Every scheduled job: JOBTABLE_SCHEDULE, then ``schedule`` class
    attributes of registered jobs.  Entries with the same name (the same job
    on the same schedule, listed twice) are one entry."""
    entries: dict[str, ScheduleEntry] = {}
    for entry in [*load_schedule(items), *class_entries()]:
        entries.setdefault(entry.name, entry)
    return list(entries.values())
