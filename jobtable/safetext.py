"""Text and values from job code, made safe to store in a result row.

Everything here is about user-controlled objects -- an exception whose
``__str__`` raises, a return value nested 100,000 levels deep or holding a
cycle, a message with NUL bytes or lone surrogates, a 20 MB traceback -- and
turns them into text that any database accepts.  The functions never raise
(whatever the object does, including raising ``SystemExit`` from ``__repr__``),
always return ``str`` that is UTF-8 encodable and holds no NUL, and stay
within their caps:

=================  ============================  =================================
what               cap                           when cut
=================  ============================  =================================
message            ``MESSAGE_LIMIT`` 64 Ki chars  the start is kept, marker at the end
traceback          ``TRACEBACK_LIMIT`` 256 Ki     start and end kept (the end names
                   chars                          the exception), marker in between
exception type     ``NAME_LIMIT`` 255 chars       (the width of the column)
return value       ``max_bytes`` (the worker      replaced by a JSON string: a note
                   passes ``max_message_size``,   saying why, then a bounded repr
                   10 MiB) and ``MAX_DEPTH`` 100
=================  ============================  =================================

Every cut text ends (or, for tracebacks, is interrupted) by a marker saying
how long the original was.  NUL becomes the four characters ``\\x00`` and a
lone surrogate its ``\\udXXX`` escape, so nothing is silently dropped.

This module imports nothing from jobtable: the worker, the Celery result
backend and anything else below or above them can share it.  The return
value encoder takes the value encoder (``params.encode``) as an argument for
that reason.
"""

from __future__ import annotations

import itertools
import json
import reprlib
import traceback
from collections.abc import Callable
from typing import Any

#: Caps, in characters (the return value: in bytes of UTF-8).
MESSAGE_LIMIT = 64 * 1024
TRACEBACK_LIMIT = 256 * 1024
NAME_LIMIT = 255
RETURN_LIMIT = 10 * 1024 * 1024
#: The smallest return value cap honoured: room for the note of a fallback.
MIN_RETURN_LIMIT = 1024
#: Deepest nesting of lists/tuples/dicts stored as JSON; deeper (or cyclic)
#: values are stored as their bounded repr.  Decoding a result reads it back
#: recursively, so this also keeps the readers safe.
MAX_DEPTH = 100
#: A chain of causes/contexts longer than this is not formatted whole
#: (formatting 100,000 chained exceptions takes seconds).
CHAIN_LIMIT = 100
#: Frames written by the last-resort traceback formatter.
FRAME_LIMIT = 200

_TRUNCATED = "[truncated by jobtable: {total:,} characters in all]"


# -- text ------------------------------------------------------------------------


def _exact(text: str) -> str:
    # A str subclass may override every method used below; str.__str__
    # returns a plain copy without calling any of them.
    return text if type(text) is str else str.__str__(text)


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _scrub(text: str) -> str:
    text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clean(text: str, limit: int = MESSAGE_LIMIT, *, keep_end: bool = False) -> str:
    """``text`` without NUL or lone surrogates, at most ``limit`` characters.

    A longer text keeps its start (``keep_end``: a quarter of the room for the
    start, the rest for the end) with a marker naming the original length.
    Never raises for a ``str`` (subclasses included).
    """
    limit = max(1, limit)
    try:
        text = _exact(text)
        if len(text) <= limit:
            if _storable(text):
                return text  # the common case: one scan, no copy
            scrubbed = _scrub(text)
            if len(scrubbed) <= limit:
                return scrubbed
        return _cut(text, limit, keep_end)
    except BaseException as exc:  # MemoryError on a huge text, say
        return f"<text not stored: cleaning it raised {_type_name_of(exc)}>"[:limit]


def _cut(text: str, limit: int, keep_end: bool) -> str:
    marker = _TRUNCATED.format(total=len(text))
    if not keep_end:
        marker = " … " + marker
        room = limit - len(marker)
        if room <= 0:
            return marker[-limit:]
        return _scrub(text[:room])[:room] + marker
    marker = "\n… " + marker + " …\n"
    room = limit - len(marker)
    if room <= 0:
        return marker[:limit]
    head, tail = room // 4, room - room // 4
    return _scrub(text[:head])[:head] + marker + (_scrub(text[-tail:])[-tail:] if tail else "")


def _type_name_of(obj: object) -> str:
    return type_name(type(obj))


def type_name(cls: type) -> str:
    """``module.QualName`` of a class (just ``QualName`` for builtins and
    ``__main__``), cleaned and at most ``NAME_LIMIT`` characters."""
    try:
        # Read through type's own descriptors: a metaclass may override
        # the attributes with properties that raise.
        qualname = type.__dict__["__qualname__"].__get__(cls)
        module = type.__dict__["__dict__"].__get__(cls).get("__module__")
        if not isinstance(qualname, str):
            qualname = "<unnamed type>"
        name = qualname
        if isinstance(module, str) and module not in ("builtins", "__main__"):
            name = f"{_exact(module)}.{_exact(qualname)}"
        return clean(name, NAME_LIMIT)
    except BaseException:
        return "<unnamed type>"


def _unprintable(obj: object, what: str, exc: BaseException) -> str:
    return f"<unprintable {_type_name_of(obj)}: {what}() raised {_type_name_of(exc)}>"


def safe_str(obj: object, limit: int = MESSAGE_LIMIT) -> str:
    """``str(obj)``, made safe (see ``clean``); a placeholder naming the type
    when ``str`` raises, e.g. ``<unprintable ValueError: str() raised TypeError>``."""
    try:
        text = obj if isinstance(obj, str) else str(obj)
    except BaseException as exc:
        return clean(_unprintable(obj, "str", exc), limit)
    return clean(text, limit)


class _BoundedRepr(reprlib.Repr):
    """reprlib with a total budget: a huge or deep value costs a bounded
    amount of work, and one element whose ``__repr__`` raises is shown as
    unprintable instead of spoiling the whole repr."""

    CALLS = 20_000

    def __init__(self, chars: int) -> None:
        super().__init__()
        self.maxlevel = 10
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 100
        self.maxset = self.maxfrozenset = self.maxdeque = 100
        self.maxstring = self.maxother = max(64, min(chars, 4096))
        self.maxlong = 100
        self.calls = 0
        self.chars_left = chars

    def repr1(self, x: Any, level: int) -> str:
        if self.calls >= self.CALLS or self.chars_left <= 0:
            return "..."
        self.calls += 1
        try:
            text = super().repr1(x, level)
            if type(text) is not str:
                text = _exact(text) if isinstance(text, str) else "..."
        except BaseException as exc:
            text = _unprintable(x, "repr", exc)
        self.chars_left -= len(text)
        return text

    def repr_instance(self, x: Any, level: int) -> str:
        # reprlib's own fallback reads x.__class__, which may raise too.
        try:
            text = repr(x)
        except BaseException as exc:
            return _unprintable(x, "repr", exc)
        if not isinstance(text, str):
            return "..."
        text = _exact(text)
        if len(text) > self.maxother:
            half = max(0, (self.maxother - 3) // 2)
            text = text[:half] + "..." + text[len(text) - half :]
        return text


def safe_repr(obj: object, limit: int = MESSAGE_LIMIT) -> str:
    """A bounded ``repr(obj)``: at most 10 levels and 100 items per container
    are shown, elements whose repr raises are shown as unprintable, then the
    text is cleaned and capped at ``limit`` characters."""
    try:
        text = _BoundedRepr(max(1, limit) * 2).repr(obj)
    except BaseException as exc:
        text = _unprintable(obj, "repr", exc)
    return clean(text, limit)


# -- exceptions ------------------------------------------------------------------------


def _chain_length(exc: BaseException) -> int:
    """Exceptions reachable through __cause__/__context__ (bounded walk)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack and len(seen) <= CHAIN_LIMIT:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        stack.append(getattr(current, "__cause__", None))
        stack.append(getattr(current, "__context__", None))
    return len(seen)


def _frames(exc: BaseException) -> str:
    """The last-resort formatter: file, line and function of each frame,
    read straight from the traceback objects (no source, no user code)."""
    lines = ["Traceback (most recent call last):\n"]
    tb = exc.__traceback__
    count = 0
    while tb is not None and count < FRAME_LIMIT:
        code = tb.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
        tb = tb.tb_next
        count += 1
    if tb is not None:
        lines.append("  ... (more frames not shown)\n")
    lines.append(f"{type_name(type(exc))}: {safe_str(exc)}\n")
    return "".join(lines)


def _last_of_chain(exc: BaseException) -> str:
    # TracebackException walks the whole chain even with chain=False (seconds
    # for 100,000 links): format this exception alone, then put its links back.
    cause, context = exc.__cause__, exc.__context__
    exc.__cause__ = exc.__context__ = None
    try:
        text = "".join(traceback.format_exception(exc))
    finally:
        exc.__cause__, exc.__context__ = cause, context
    return text + f"\n(jobtable: more than {CHAIN_LIMIT} chained exceptions (__cause__/__context__) not shown)\n"


def format_traceback(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """The formatted traceback of ``exc``, as ``traceback.format_exception``
    would print it, made safe and capped at ``limit`` characters (start and
    end kept).  When the standard formatter raises (a ``__notes__`` property
    that raises, say), the frames are listed without source lines; a chain
    of more than ``CHAIN_LIMIT`` exceptions shows only the last one."""
    try:
        if _chain_length(exc) <= CHAIN_LIMIT:
            text = "".join(traceback.format_exception(exc))
        else:
            text = _last_of_chain(exc)
    except BaseException as first:
        try:
            text = _frames(exc) + f"(jobtable: the standard traceback formatter raised {_type_name_of(first)})\n"
        except BaseException as second:
            text = f"<traceback unavailable: formatting it raised {_type_name_of(first)}, then {_type_name_of(second)}>"
    return clean(text, limit, keep_end=True)


def exception_fields(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """``error_type``, ``error_message`` and ``traceback`` of a result row."""
    return {
        "error_type": type_name(type(exc)),
        "error_message": safe_str(exc, MESSAGE_LIMIT),
        "traceback": format_traceback(exc) if with_traceback else None,
    }


# -- return values -----------------------------------------------------------------------


def _shape_problem(value: Any, max_depth: int, max_bytes: int) -> str | None:
    """Why ``value`` cannot be stored as JSON within the caps, or None.

    An iterative walk (so no RecursionError) that tracks the containers on
    the current path (so a cycle is named as one) and adds up a lower bound
    of the encoded size (so a huge value is refused before it is encoded,
    and a value that fits is never refused here).
    """
    exit_marker = object()
    path: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 1)]
    size = 0
    while stack:
        item, depth = stack.pop()
        if item is exit_marker:
            path.discard(depth)  # depth holds the container's id here
            continue
        if type(item) is str:
            size += len(item) + 2
        elif isinstance(item, (list, tuple, dict)):
            if id(item) in path:
                return "it contains a reference cycle"
            if depth > max_depth:
                return f"it is nested deeper than {max_depth} levels"
            path.add(id(item))
            stack.append((exit_marker, id(item)))
            # islice: a subclass's __iter__ may never end.
            if isinstance(item, dict):
                for key, element in itertools.islice(item.items(), max_bytes):
                    size += (len(key) if type(key) is str else 1) + 4
                    stack.append((element, depth + 1))
            else:
                size += 1
                stack.extend((element, depth + 1) for element in itertools.islice(item, max_bytes))
        else:
            size += 1  # numbers, None, dates, bytes...: at least one byte
        if size > max_bytes:
            return f"it is larger than the {max_bytes:,}-byte limit as JSON"
    return None


def _identity(value: Any) -> Any:
    return value


def encode_json(
    value: Any,
    encode: Callable[[Any], Any] = _identity,
    *,
    max_bytes: int = RETURN_LIMIT,
    max_depth: int = MAX_DEPTH,
) -> str:
    """``value`` as compact JSON text (through ``encode``, e.g. ``params.encode``,
    first), at most ``max_bytes`` of UTF-8 (``MIN_RETURN_LIMIT`` at least).

    Strings with lone surrogates are stored with ``\\u`` escapes (they read
    back as the same string); NUL is always escaped by JSON.  A value that
    is too deep, cyclic, too large or not encodable is stored as a JSON
    string: ``[jobtable: the return value was not stored as JSON: WHY] REPR``.
    """
    max_bytes = max(MIN_RETURN_LIMIT, max_bytes)
    try:
        if value is None:
            return "null"
        problem = _shape_problem(value, max_depth, max_bytes)
        if problem is None:
            data = encode(value)
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            if not _storable(text):
                text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
            if size <= max_bytes:
                return text
            problem = f"it is {size:,} bytes as JSON, over the {max_bytes:,}-byte limit"
    except BaseException as exc:
        problem = f"it cannot be encoded ({_type_name_of(exc)}: {safe_str(exc, 300)})"
    return _fallback(value, problem, max_bytes)


def _fallback(value: Any, problem: str, max_bytes: int) -> str:
    note = clean(f"[jobtable: the return value was not stored as JSON: {problem}] ", 1000)
    try:
        # JSON escapes can grow a character to six: keep the repr well inside.
        room = max(64, min(MESSAGE_LIMIT, (max_bytes - 2 * len(note)) // 6))
        text = json.dumps(note + safe_repr(value, room), ensure_ascii=False)
        if len(text.encode("utf-8")) <= max_bytes:
            return text
    except BaseException:
        pass
    return json.dumps(note + "<repr not stored>")
