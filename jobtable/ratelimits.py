"""Celery's rate strings (``rate_limit="10/m"``) read as Celery reads them.

``celery.utils.time.rate``: ``"<number>/<s|m|h>"``, or a bare number (a
string or an int/float) meaning per second; ``""``, ``None``, ``0`` and
``"0/m"`` mean no limit.  The number is whatever ``float()`` accepts, so
``"0.5/s"`` and ``" 10/m"`` work as under Celery.  Where Celery would fail
later or misbehave (``"10/x"`` raises KeyError when the first task runs, a
negative rate or ``inf`` makes its token bucket meaningless) jobtable
refuses the value here, when the task or Job is defined, with the option's
name and the fix.

The limit itself is enforced by the database (``db/ratelimit_sql.py``): one
token per ``1 / rate`` seconds per task name, shared by every worker.
"""

from __future__ import annotations

import math
from typing import Any

from .exceptions import RateLimitError as RateLimitError
from .safetext import safe_repr

#: Celery's units (``celery.utils.time.RATE_MODIFIER_MAP``): seconds per unit.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

#: Bounds of a rate, tokens per second.  Above a million a second the
#: database's microsecond timestamps cannot space the tokens; below one a
#: month the next token's time is further than any worker waits for.
MAX_RATE = 1_000_000.0
MIN_RATE = 1.0 / (31 * 24 * 3600)

_FIX = 'give "<number>/s", "<number>/m" or "<number>/h" (e.g. "10/m"), a number of tasks per second, or None for no limit'


def parse_rate(value: Any, option: str = "rate_limit") -> float | None:
    """Tokens per second of ``value``, or None for no limit.

    ``option`` names the setting in the error (``rate_limit`` of a task,
    ``task_default_rate_limit``...).  Raises ConfigurationError (a
    ValueError too) for anything Celery would not read as a rate."""
    if value is None or (isinstance(value, str) and value == ""):
        return None
    if isinstance(value, bool):
        raise RateLimitError(f"{option}={value!r} is a bool, not a rate: {_FIX}.")
    if isinstance(value, (int, float)):
        number = float(value) if not isinstance(value, int) or abs(value) < 10**300 else math.inf
        return _checked(number, 1.0, option, value)
    if not isinstance(value, str):
        # Never str() it: a hostile __str__ must not decide the message.
        raise RateLimitError(f"{option}={safe_repr(value, 80)} is a {type(value).__name__}, not a rate: {_FIX}.")
    if len(value) > 100 or "\x00" in value:
        raise RateLimitError(f"{option}={safe_repr(value, 80)} is not a rate: {_FIX}.")
    count, _, unit = value.partition("/")
    if unit not in UNITS and unit != "":
        raise RateLimitError(f"{option}={value!r}: unknown unit {unit!r} (s, m or h): {_FIX}.")
    try:
        number = float(count)
    except ValueError:
        raise RateLimitError(f"{option}={value!r}: {count!r} is not a number: {_FIX}.") from None
    return _checked(number, UNITS[unit or "s"], option, value)


def _checked(number: float, seconds_per_unit: float, option: str, value: Any) -> float | None:
    if math.isnan(number) or math.isinf(number):
        raise RateLimitError(f"{option}={safe_repr(value, 80)} is not a finite rate: {_FIX}.")
    if number < 0:
        raise RateLimitError(f"{option}={safe_repr(value, 80)} is negative: {_FIX} (0 or None: no limit).")
    if number == 0:
        return None  # Celery: 0 is no limit
    per_second = number / seconds_per_unit
    if per_second > MAX_RATE:
        raise RateLimitError(
            f"{option}={safe_repr(value, 80)} is over {MAX_RATE:,.0f} per second, more than the database's "
            "clock can space: give a lower rate, or None for no limit."
        )
    if per_second < MIN_RATE:
        raise RateLimitError(
            f"{option}={safe_repr(value, 80)} is less than one task a month: give at least \"1/h\"-style rates "
            "(one per 31 days at the least), or None for no limit."
        )
    return per_second
