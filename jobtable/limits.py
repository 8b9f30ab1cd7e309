"""What a value must satisfy before jobtable stores it.

Every door into the queue (the Job API, Kombu publish, the Celery shim)
checks here before anything is written, so a value the database or the JSON
encoder would refuse -- with an ``OverflowError``, a ``UnicodeEncodeError``,
a ``RecursionError`` or a ``DataError`` quoting SQL -- is refused first, by
an ``EnqueueError`` that names the argument, the value and the fix.
"""

from __future__ import annotations

import math
import re
import reprlib
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from .exceptions import EnqueueError

#: Names are String(255) columns (task id, job name, queue, concurrency key).
MAX_NAME = 255
#: Deepest nesting of a job parameter or a header value.  JSON decoders
#: recurse once per level (Python's stops near 1000, inside a worker that is
#: already some frames deep); real data stays far below this.
MAX_DEPTH = 100
#: Integer columns (attempt, retries) are 32-bit on every dialect.
INT32_MAX = 2**31 - 1
#: Python's datetime ends here; every dialect stores it.
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4
_short.maxlevel = 2


def short(value: Any) -> str:
    """A bounded repr for error messages: never the whole 10 MB value, and
    never a raw lone surrogate (repr escapes it), so the error itself can be
    logged."""
    try:
        return _short.repr(value)
    except Exception:  # a raising __repr__ must not replace the real error
        return f"<{type(value).__name__} object>"


def surrogate_at(value: str) -> int | None:
    """The index of the first lone surrogate in ``value``, or None.  A lone
    surrogate is not Unicode text: UTF-8 (PostgreSQL, SQLite) cannot hold it."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(json_text: str) -> str:
    """JSON text with each lone surrogate written as a ``\\udXXX`` escape,
    as Kombu's own JSON (``ensure_ascii``) writes it on Redis: valid JSON that
    decodes to the same string.  (In JSON text, characters outside ASCII
    occur only inside strings, where an escape means the same character.)"""
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", json_text)


def check_name(what: str, value: Any, *, source: str, allow_empty: bool = False) -> str:
    """A task id, job name, queue or concurrency key: text of 1 to 255
    characters, without NUL (PostgreSQL text cannot hold it) or lone surrogates."""
    if not isinstance(value, str) or (not value and not allow_empty):
        kind = "a string" if allow_empty else "a non-empty string"
        raise EnqueueError(f"{source}: {what}={short(value)} must be {kind} (of at most {MAX_NAME} characters).")
    if len(value) > MAX_NAME:
        raise EnqueueError(
            f"{source}: {what} is {len(value):,} characters long ({short(value)}); the limit is {MAX_NAME}. "
            "Use a shorter name (a hash of a long key, say)."
        )
    if "\x00" in value:
        raise EnqueueError(
            f"{source}: {what}={short(value)} contains a NUL character (\\x00) at position {value.index(chr(0))}, "
            "which a database column cannot hold. Remove it."
        )
    at = surrogate_at(value)
    if at is not None:
        raise EnqueueError(
            f"{source}: {what}={short(value)} contains a lone surrogate ({value[at]!r}) at position {at}: "
            "it is not valid Unicode text. Decode the bytes it came from with errors='replace'."
        )
    return value


def check_int(what: str, value: Any, low: int, high: int, *, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnqueueError(f"{source}: {what}={short(value)} must be an integer between {low} and {high}.")
    if not low <= value <= high:
        raise EnqueueError(f"{source}: {what}={short(value)} is out of range: use an integer between {low} and {high}.")
    return int(value)


def check_time(what: str, value: datetime, *, source: str) -> datetime:
    """An aware datetime that UTC can express (``datetime.max`` with a
    negative offset cannot: it would be past year 9999 in UTC)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise EnqueueError(
            f"{source}: {what}={short(value)} is a naive datetime: pass an aware one, "
            "e.g. datetime.now(timezone.utc) + timedelta(...)."
        )
    try:
        return value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise EnqueueError(
            f"{source}: {what}={short(value)} is out of range: in UTC it falls outside years 1-9999. "
            f"Pass a time before {LATEST.isoformat()}."
        ) from None


def seconds_of(what: str, value: Any, *, source: str, datetimes: bool = True) -> float:
    """A finite, non-negative number of seconds (int, float or timedelta).
    ``datetimes``: whether the caller takes an aware datetime too (its
    errors then say so)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        kinds = "a timedelta, or an aware datetime" if datetimes else "or a timedelta"
        raise EnqueueError(f"{source}: {what}={short(value)} is not a delay: pass seconds (a number >= 0), {kinds}.")
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float's range
            seconds = math.inf
    if math.isnan(seconds):
        raise EnqueueError(f"{source}: {what}={short(value)} is NaN: pass a number of seconds >= 0.")
    if seconds < 0:
        also = " (or a future datetime)" if datetimes else ""
        raise EnqueueError(f"{source}: {what}={short(value)} is negative: pass 0 or more seconds{also}.")
    return seconds


def time_after(now: datetime, what: str, value: Any, *, source: str, datetimes: bool = True) -> datetime:
    """``now`` plus ``value`` seconds, refused when the sum is not a time
    (infinite, or past year 9999)."""
    seconds = seconds_of(what, value, source=source, datetimes=datetimes)
    try:
        if math.isinf(seconds):
            raise OverflowError
        return now + timedelta(seconds=seconds)
    except OverflowError:
        raise EnqueueError(
            f"{source}: {what}={short(value)} is too far in the future: the latest time jobtable can store is "
            f"{LATEST.date().isoformat()}. Pass a smaller delay."
        ) from None


def int_too_long(value: int) -> bool:
    """Whether JSON cannot write ``value``: Python refuses to turn ints of
    more than ``sys.get_int_max_str_digits()`` digits into text."""
    limit = sys.get_int_max_str_digits()
    if limit == 0 or value.bit_length() < 3 * limit:  # 8**limit < 10**limit
        return False
    try:
        int.__repr__(value)
    except ValueError:
        return True
    return False


def unstorable(value: Any, depth: int = 0, *, surrogates: bool = False) -> tuple[str, str] | None:
    """Where (a ``[...]`` path suffix) and why a header or property value is
    not plain JSON that the database can hold, or None when it is.
    ``surrogates``: lone surrogates are fine (they will be written escaped)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if surrogates:
            return None
        at = surrogate_at(value)
        return None if at is None else ("", f"contains a lone surrogate ({value[at]!r}) at position {at}")
    if isinstance(value, int):
        return ("", f"is an integer of {value.bit_length():,} bits, too long to write as JSON") if int_too_long(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", f"is {value!r}, which JSON cannot represent")
    if depth >= MAX_DEPTH:
        return "", f"is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = unstorable(item, depth + 1, surrogates=surrogates)
            if found is not None:
                return f"[{index}]{found[0]}", found[1]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return "", f"has a key {short(key)} of type {type(key).__name__} (JSON object keys are strings)"
            found = unstorable(key, depth + 1, surrogates=surrogates)
            if found is not None:
                return "", f"has a key that {found[1]}"
            found = unstorable(item, depth + 1, surrogates=surrogates)
            if found is not None:
                return f"[{key!r}]{found[0]}", found[1]
        return None
    return "", f"is of type {type(value).__module__}.{type(value).__qualname__}, which is not JSON"
