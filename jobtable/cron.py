"""Cron expressions: checked here, expanded and iterated by croniter.

This module knows nothing about time zones: it finds the next or previous
*naive* minute whose fields match (croniter on naive datetimes).
``scheduling.Schedule`` maps those wall times to instants in a time zone (and
deals with DST and catch-up).

What jobtable adds to croniter is the standard (Vixie) cron dialect and its
errors: every list item is checked first, so that an error names the field,
the value and a fix, and so that croniter's extensions are refused rather
than half-understood:

- five fields: minute, hour, day of month, month, day of week (no seconds or
  year field, no Quartz ``L W # ?``, no ``H`` hashes, no ``R`` randoms, no
  wrapping ranges such as ``22-2``, which croniter would accept);
- ``*``, numbers, ``a-b`` ranges, ``,`` lists, ``/n`` steps on ``*`` or a
  range, and ``a/n`` as a short form of ``a-<max>/n``;
- month names ``jan``..``dec`` and weekday names ``sun``..``sat`` (any case);
  day of week 0 and 7 are both Sunday;
- ``@yearly @annually @monthly @weekly @daily @midnight @hourly``;
- when day of month *and* day of week are both restricted, a day matching
  either runs (``0 0 13 * 5``: the 13th and every Friday).  A field that
  starts with ``*`` (``*``, ``*/2``) does not count as restricted, as in
  Vixie cron: ``0 0 */2 * 1`` is odd days that are Mondays.

Each checked item is rewritten in plain numbers for croniter, which also
works around its misreadings (see ``_croniter_item``).
"""

from __future__ import annotations

import calendar
import threading
from dataclasses import dataclass, field
from datetime import datetime

from croniter import CroniterBadDateError, CroniterError, croniter

from .exceptions import ConfigurationError

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

_local = threading.local()


class CronError(ConfigurationError, ValueError):
    """A cron expression that cannot be parsed."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)
    example: str = ""

    @property
    def last(self) -> int:
        """Where ``*`` and ``a/n`` end: the week ends on Saturday (6), 7
        being Sunday again."""
        return 6 if self.name == "day of week" else self.high


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


def _croniter_item(part: str, spec: _Field, expression: str, raw: str) -> str:
    """One list item checked, and rewritten in numbers for croniter."""
    body, slash, step_text = part.partition("/")
    step = ""
    if slash:
        if not (step_text.isascii() and step_text.isdigit()) or not step_text.strip("0"):
            raise _fail(expression, f"{spec.name} field {raw!r}: the step after / must be a whole number above 0")
        # Any step past the field's span keeps only the first value; capped,
        # a thousand-digit step is not an int() to compute.
        span = spec.high - spec.low + 1
        step = f"/{min(int(step_text) if len(step_text.lstrip('0')) <= 4 else span, span)}"
    if body == "*":
        return f"{spec.low}-{spec.last}{step}" if step else "*"
    if "-" in body:
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
        if spec.name == "day of week" and low == 7 and slash:
            low = 0  # "7/2" is "sun/2": from Sunday (0) to Saturday
        # "a/n" is short for "a-<max>/n" (an extension most crons accept).
        high = spec.last if slash else low
        if high < low:
            return str(low)
    if low == high:
        # croniter 7 reads a range of one as "*": "5-5 * * * *" is every
        # minute to it, "1-1,3" too, and "3-3/2" every even minute.  A
        # single value means the same and is read right.
        return str(low)
    return f"{low}-{high}{step}"


def _full(values: list[int | str], spec: _Field) -> frozenset[int]:
    """croniter's expansion of a field as a set (``*`` = every value; 7 is
    Sunday, 0)."""
    if "*" in values:
        return frozenset(range(spec.low, spec.last + 1))
    return frozenset(0 if spec.name == "day of week" and v == 7 else int(v) for v in values)


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
    #: What croniter is given: the checked fields in numbers.
    croniter_text: str = field(default="", compare=False)
    #: croniter's own day_or (see ``parse``).
    croniter_day_or: bool = field(default=False, compare=False)

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
        plain = []
        for raw, spec in zip(fields, FIELDS):
            items = []
            for part in raw.split(","):
                if not part:
                    raise _fail(expression, f"{spec.name} field {raw!r} has an empty list item (e.g. {spec.example})")
                items.append(_croniter_item(part, spec, expression, raw))
            plain.append(",".join(items))
        try:
            expanded = croniter.expand(" ".join(plain))[0]
        except CroniterError as exc:  # checked above: croniter should agree
            raise _fail(expression, f"croniter refused {' '.join(plain)!r} ({exc})") from None
        minute, hour, dom, month, dow = (_full(values, spec) for values, spec in zip(expanded, FIELDS))
        day_or = not fields[2].startswith("*") and not fields[4].startswith("*")
        croniter_day_or = day_or
        if day_or and (dom == _full(["*"], FIELDS[2]) or dow == _full(["*"], FIELDS[4])):
            # Either field matching every day makes every day match.  croniter
            # would read "13 * mon-sun" as the 13th only: it expands mon-sun
            # to "*", and a "*" field turns its OR off.
            plain[2], plain[4], croniter_day_or = "*", "*", False
        parsed = cls(
            text=text,
            minutes=tuple(sorted(minute)),
            hours=tuple(sorted(hour)),
            days=dom,
            months=tuple(sorted(month)),
            weekdays=dow,
            day_or=day_or,
            croniter_text=" ".join(plain),
            croniter_day_or=croniter_day_or,
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

    def _croniter(self, start: datetime) -> croniter:
        # Building a croniter re-parses the expression (most of a lookup's
        # cost), so each thread keeps one per expression and moves it to
        # ``start``; a croniter is stateful, hence not shared across threads.
        cache: dict[tuple[str, bool], croniter] = _local.__dict__.setdefault("iterators", {})
        key = (self.croniter_text, self.croniter_day_or)
        it = cache.get(key)
        if it is None:
            if len(cache) >= 1024:
                cache.clear()
            it = cache[key] = croniter(
                self.croniter_text, start, day_or=self.croniter_day_or, max_years_between_matches=SEARCH_YEARS
            )
        else:
            it.set_current(start, force=True)
        return it

    def next_after(self, after: datetime) -> datetime:
        """The first matching naive minute strictly after ``after`` (naive)."""
        try:
            found: datetime = self._croniter(after).get_next(datetime)
        except CroniterBadDateError:
            raise CronError(
                f"Cron expression {self.text!r} has no run within {SEARCH_YEARS} years of {after}."
            ) from None
        return found

    def previous_before(self, before: datetime) -> datetime:
        """The last matching naive minute strictly before ``before`` (naive)."""
        try:
            found: datetime = self._croniter(before).get_prev(datetime)
        except CroniterBadDateError:
            raise CronError(
                f"Cron expression {self.text!r} has no run within {SEARCH_YEARS} years before {before}."
            ) from None
        return found
