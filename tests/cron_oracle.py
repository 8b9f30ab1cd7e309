"""A frozen copy of jobtable/cron.py as it was before croniter did the parsing
and iterating (commit a8019a7): the oracle tests/test_cron_oracle.py compares
the croniter-based CronExpression with.  Not used by jobtable itself."""

from __future__ import annotations

import calendar
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache

from jobtable.exceptions import ConfigurationError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MONTH_NAMES = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

_EXAMPLES = '"0 9 * * *" (9:00 every day), "*/15 * * * *" (every 15 minutes), "0 0 * * mon-fri"'

#: How far ahead (or back) a search goes before concluding nothing matches.
#: Feb 29 on a given weekday recurs within 28 years; 400 covers any pattern.
SEARCH_YEARS = 400


class CronError(ConfigurationError, ValueError):
    """A cron expression that cannot be parsed."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)
    example: str = ""


FIELDS = (
    _Field("minute", 0, 59, example="0, 30, */15, 5-59/15"),
    _Field("hour", 0, 23, example="9, 8-18, */2"),
    _Field("day of month", 1, 31, example="1, 15, 1-7, */2"),
    _Field("month", 1, 12, MONTH_NAMES, example="1, jan, jan-mar, */3"),
    _Field("day of week", 0, 7, DAY_NAMES, example="0 (Sunday), mon, mon-fri, 1-5"),
)


def _fail(expression: str, message: str) -> CronError:
    return CronError(
        f"Invalid cron expression {expression!r}: {message}. "
        f"Cron takes five fields, minute hour day-of-month month day-of-week, e.g. {_EXAMPLES}."
    )


def _value(text: str, spec: _Field, expression: str, raw: str) -> int:
    lowered = text.lower()
    if lowered in spec.names:
        return spec.names[lowered]
    if not (text.isascii() and text.isdigit()):
        hint = f" (names: {', '.join(spec.names)})" if spec.names else ""
        if text in ("?", "L", "W") or "#" in text or text.upper().endswith(("L", "W")):
            hint = f"; {text!r} is a Quartz extension standard cron does not have, use * or explicit values"
        raise _fail(expression, f"{spec.name} field {raw!r}: {text!r} is not a number{hint}")
    # Compared as text first: a number thousands of digits long is out of
    # range too, not an error of int().
    value = int(text) if len(text.lstrip("0")) <= 4 else spec.high + 1
    if not spec.low <= value <= spec.high:
        raise _fail(
            expression,
            f"{spec.name} field {raw!r}: {text} is out of range, use {spec.low}-{spec.high} (e.g. {spec.example})",
        )
    return value


def _parse_field(raw: str, spec: _Field, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for part in raw.split(","):
        if not part:
            raise _fail(expression, f"{spec.name} field {raw!r} has an empty list item (e.g. {spec.example})")
        body, _, step_text = part.partition("/")
        step = 1
        if _:
            if not (step_text.isascii() and step_text.isdigit()) or not step_text.strip("0"):
                raise _fail(
                    expression, f"{spec.name} field {raw!r}: the step after / must be a whole number above 0"
                )
            step = int(step_text) if len(step_text.lstrip("0")) <= 4 else spec.high + 1
        if body == "*":
            low, high = spec.low, spec.high
            if spec.name == "day of week":
                high = 6  # 7 is Sunday again; */2 must not add it twice
        elif "-" in body:
            first, _, last = body.partition("-")
            low = _value(first, spec, expression, raw)
            high = _value(last, spec, expression, raw)
            if spec.name == "day of week" and high == 0 and low > 0:
                high = 7  # "mon-sun": Sunday as 7 ends the week
            if low > high:
                raise _fail(
                    expression,
                    f"{spec.name} field {raw!r}: the range {body} goes backwards; "
                    f"split it, e.g. {first}-{spec.high},{spec.low}-{last}",
                )
        else:
            low = _value(body, spec, expression, raw)
            # "a/n" is short for "a-<max>/n" (an extension most crons accept);
            # the week ends on Saturday (6), 7 being Sunday again.
            high = (6 if spec.name == "day of week" else spec.high) if _ else low
        values.update(range(low, high + 1, step))
    if spec.name == "day of week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    """A parsed five-field cron expression."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]  # 0 = Sunday
    #: Day of month and day of week both restricted: either one matches.
    day_or: bool

    @classmethod
    def parse(cls, expression: str) -> CronExpression:
        if not isinstance(expression, str):
            raise CronError(f"A cron expression must be a string such as {_EXAMPLES}; got {expression!r}.")
        text = " ".join(expression.split())
        if not text:
            # Not "every minute": an empty setting is a mistake, not a schedule.
            raise _fail(expression, "it is empty")
        if text.startswith("@"):
            if text.lower() not in ALIASES:
                raise _fail(
                    expression,
                    f"unknown shortcut {text!r}; use one of {', '.join(ALIASES)} (@reboot is not supported)",
                )
            fields = ALIASES[text.lower()].split()
        else:
            fields = text.split()
        if len(fields) != 5:
            extra = " (a seconds or year field is not supported)" if len(fields) in (6, 7) else ""
            raise _fail(expression, f"it has {len(fields)} field(s), not 5{extra}")
        minute, hour, dom, month, dow = (_parse_field(raw, spec, expression) for raw, spec in zip(fields, FIELDS))
        day_or = not fields[2].startswith("*") and not fields[4].startswith("*")
        parsed = cls(
            text=text,
            minutes=tuple(sorted(minute)),
            hours=tuple(sorted(hour)),
            days=dom,
            months=tuple(sorted(month)),
            weekdays=dow,
            day_or=day_or,
        )
        parsed._check_possible(expression)
        return parsed

    def _check_possible(self, expression: str) -> None:
        if self.day_or or not self.days:
            return
        # Without a weekday to fall back on, the day must exist in some month.
        longest = max(calendar.monthrange(2000, m)[1] for m in self.months)  # 2000: Feb has 29 days
        if min(self.days) > longest:
            months = ", ".join(calendar.month_abbr[m] for m in self.months)
            raise _fail(expression, f"it never runs: no month in ({months}) has a day {min(self.days)}")

    @property
    def every_hour(self) -> bool:
        """True when the hour field allows every hour (``*``)."""
        return len(self.hours) == 24

    # -- day matching ---------------------------------------------------------------

    def _day_matches(self, day: date) -> bool:
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        return (in_days or in_weekdays) if self.day_or else (in_days and in_weekdays)

    def days_in(self, year: int, month: int) -> tuple[int, ...]:
        """Matching days of a month, sorted."""
        return _days_in(self, year, month)

    # -- searching ----------------------------------------------------------------------

    def next_after(self, after: datetime) -> datetime:
        """The first matching naive minute strictly after ``after`` (naive)."""
        t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t.year + SEARCH_YEARS
        year, month, day, hour, minute = t.year, t.month, t.day, t.hour, t.minute
        while year <= limit:
            if month not in self.months:
                i = bisect_left(self.months, month)
                if i == len(self.months):
                    year, month = year + 1, self.months[0]
                else:
                    month = self.months[i]
                day, hour, minute = 1, 0, 0
                continue
            days = self.days_in(year, month)
            i = bisect_left(days, day)
            if i == len(days):
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                day, hour, minute = 1, 0, 0
                continue
            if days[i] != day:
                day, hour, minute = days[i], 0, 0
            j = bisect_left(self.hours, hour)
            if j == len(self.hours):
                day, hour, minute = day + 1, 0, 0
                if day > calendar.monthrange(year, month)[1]:
                    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                    day = 1
                continue
            if self.hours[j] != hour:
                hour, minute = self.hours[j], 0
            k = bisect_left(self.minutes, minute)
            if k == len(self.minutes):
                hour, minute = hour + 1, 0
                if hour == 24:
                    day, hour = day + 1, 0
                    if day > calendar.monthrange(year, month)[1]:
                        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                        day = 1
                continue
            return datetime(year, month, day, hour, self.minutes[k])
        raise CronError(f"Cron expression {self.text!r} has no run within {SEARCH_YEARS} years of {after}.")

    def previous_before(self, before: datetime) -> datetime:
        """The last matching naive minute strictly before ``before`` (naive)."""
        t = before.replace(second=0, microsecond=0)
        if t == before:
            t -= timedelta(minutes=1)
        limit = t.year - SEARCH_YEARS
        year, month, day, hour, minute = t.year, t.month, t.day, t.hour, t.minute
        while year >= limit:
            if month not in self.months:
                i = bisect_right(self.months, month) - 1
                if i < 0:
                    year, month = year - 1, self.months[-1]
                else:
                    month = self.months[i]
                day, hour, minute = calendar.monthrange(year, month)[1], 23, 59
                continue
            days = self.days_in(year, month)
            i = bisect_right(days, day) - 1
            if i < 0:
                year, month = (year - 1, 12) if month == 1 else (year, month - 1)
                day, hour, minute = calendar.monthrange(year, month)[1], 23, 59
                continue
            if days[i] != day:
                day, hour, minute = days[i], 23, 59
            j = bisect_right(self.hours, hour) - 1
            if j < 0:
                day, hour, minute = day - 1, 23, 59
                if day < 1:
                    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
                    day = calendar.monthrange(year, month)[1]
                continue
            if self.hours[j] != hour:
                hour, minute = self.hours[j], 59
            k = bisect_right(self.minutes, minute) - 1
            if k < 0:
                hour, minute = hour - 1, 59
                if hour < 0:
                    day, hour = day - 1, 23
                    if day < 1:
                        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
                        day = calendar.monthrange(year, month)[1]
                continue
            return datetime(year, month, day, hour, self.minutes[k])
        raise CronError(f"Cron expression {self.text!r} has no run within {SEARCH_YEARS} years before {before}.")


@lru_cache(maxsize=4096)
def _days_in(expr: CronExpression, year: int, month: int) -> tuple[int, ...]:
    last = calendar.monthrange(year, month)[1]
    return tuple(d for d in range(1, last + 1) if expr._day_matches(date(year, month, d)))
