"""The one check every new message passes before its row is written.

The Job API, the Kombu transport's publish and the Celery shim all build
their rows here (``checked_row``): headers and properties must be JSON the
database can hold, the columns extracted from them must fit (names, times,
integers), and the whole message must be within ``max_message_size``.  A
message that fails is refused with an ``EnqueueError`` naming the part at
fault, and nothing is stored.  (Retries of a message already stored are
built by ``messages.row_values`` directly: the queue accepted them once.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from . import limits, messages
from .db import tables
from .exceptions import EnqueueError, MessageTooLarge
from .limits import short


def checked_row(
    envelope: dict[str, Any],
    queue: str,
    now: datetime,
    *,
    source: str,
    arg_names: Sequence[str] = (),
    clamp_priority: bool = False,
    escape_surrogates: bool = False,
) -> dict[str, Any]:
    """The ``jobtable_request`` row of a new message, or ``EnqueueError``.

    ``source`` starts every error message (the job, the task, the Kombu
    publish); ``arg_names`` name the positional arguments in a size error;
    ``clamp_priority``: fit any integer priority into the column (AMQP's go
    0-255, Kombu's users may send more) instead of refusing it.
    ``escape_surrogates``: store lone surrogates in headers as JSON escapes,
    as Kombu's JSON does on its other virtual transports (Celery's
    ``argsrepr`` of an argument holding one has it raw), instead of refusing.
    """
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    if headers is not None and not isinstance(headers, dict):
        raise EnqueueError(f"{source}: the message headers must be a dict, not {type(headers).__name__}.")
    if properties is not None and not isinstance(properties, dict):
        raise EnqueueError(f"{source}: the message properties must be a dict, not {type(properties).__name__}.")
    headers = headers or {}
    properties = properties or {}
    _check_columns(headers, properties, source, clamp_priority)
    # Headers and properties always (they are small): deep nesting is
    # refused here, not only when json.dumps gives up near 1000 levels.
    problem = _find_problem(envelope, body=False, surrogates=escape_surrogates)
    if problem is not None:
        raise EnqueueError(f"{source}: {problem}")
    if clamp_priority and isinstance(properties.get("priority"), int):
        properties["priority"] = max(tables.PRIORITY_MIN, min(tables.PRIORITY_MAX, properties["priority"]))
    text = _check_size(_dump(envelope, source), envelope, source, arg_names, escape_surrogates)
    row = messages.row_values(envelope, queue, now, message=text)
    limits.check_name("the task id (header 'id')", row["task_id"], source=source)
    limits.check_name("the task name (header 'task')", row["task_name"], source=source, allow_empty=True)
    limits.check_name("queue", row["queue"], source=source)
    if row["concurrency_key"] is not None:
        limits.check_name(f"the concurrency key (header {messages.CONCURRENCY_KEY_HEADER!r})", row["concurrency_key"], source=source)
    limits.check_int("priority", row["priority"], tables.PRIORITY_MIN, tables.PRIORITY_MAX, source=source)
    for column in ("run_at", "expires_at"):
        if row[column] is not None:
            row[column] = limits.check_time(column, row[column], source=source)
    return row


def dump_body(body: list[Any], source: str) -> str:
    """A Celery body ``[args, kwargs, embed]`` as JSON text; the arguments are
    already encoded, but the embed (links, chains) carries options as given."""
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        found = limits.unstorable(body)
        where = "the body" + (found[0] if found else "")
        reason = found[1] if found else "cannot be written as JSON"
        raise EnqueueError(f"{source}: {where} {reason}. Pass JSON values (str, int, float, bool, None, lists, dicts).") from None


def _check_columns(headers: dict[str, Any], properties: dict[str, Any], source: str, clamp_priority: bool) -> None:
    """The headers and properties that become columns: of a type and range
    the column holds, so ``row_values`` and the INSERT cannot fail on them."""
    for name in ("id", "task"):
        value = headers.get(name)
        if value is not None and not isinstance(value, str):
            raise EnqueueError(f"{source}: header {name!r}={short(value)} must be a string, not {type(value).__name__}.")
    correlation_id = properties.get("correlation_id")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise EnqueueError(
            f"{source}: property 'correlation_id'={short(correlation_id)} must be a string, "
            f"not {type(correlation_id).__name__}."
        )
    key = headers.get(messages.CONCURRENCY_KEY_HEADER)
    if key is not None and not isinstance(key, str):
        raise EnqueueError(
            f"{source}: header {messages.CONCURRENCY_KEY_HEADER!r}={short(key)} must be a string, not {type(key).__name__}."
        )
    for name in ("retries", messages.RETRIES_HEADER):
        value = headers.get(name)
        if value is not None:
            # attempt = retries + 1 must fit the 32-bit column too.
            limits.check_int(f"header {name!r}", value, 0, limits.INT32_MAX - 1, source=source)
    priority = properties.get("priority")
    if priority is not None:
        if clamp_priority:
            limits.check_int("priority", priority, -(2**63), 2**63 - 1, source=source)
        else:
            limits.check_int("priority", priority, tables.PRIORITY_MIN, tables.PRIORITY_MAX, source=source)
    for name in ("eta", "expires"):
        value = headers.get(name)
        try:
            parsed = messages.parse_time(value)
        except (TypeError, ValueError, OverflowError, OSError):
            raise EnqueueError(
                f"{source}: header {name!r}={short(value)} is not a time: pass an ISO 8601 string "
                "(datetime.isoformat()) or a POSIX timestamp."
            ) from None
        if parsed is not None:
            limits.check_time(f"header {name!r}", parsed, source=source)


def _dump(envelope: dict[str, Any], source: str) -> str:
    """The envelope as stored: JSON without NaN/Infinity (not JSON), every
    value a JSON type."""
    try:
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        problem = _find_problem(envelope)
        if problem is None:  # pragma: no cover - the walk knows every case json.dumps refuses
            raise EnqueueError(f"{source}: the message cannot be written as JSON ({type(exc).__name__}).") from None
        raise EnqueueError(f"{source}: {problem}") from None


def _find_problem(envelope: dict[str, Any], *, body: bool = True, surrogates: bool = False) -> str | None:
    """Which header, property (or, with ``body``, body) value cannot be stored, and why."""
    # (label, key, value): labels are formatted only for a problem found --
    # a publish's two dozen headers made as many f-strings per message.
    places: list[tuple[str, Any, Any]] = []
    for section, label in (("headers", "header"), ("properties", "property")):
        values = envelope.get(section)
        if isinstance(values, dict):
            for key, value in values.items():
                if key.__class__ is not str and not isinstance(key, str):
                    return f"a {label} name {short(key)} is a {type(key).__name__}; names are strings."
                cls = value.__class__
                # Most headers are plain: ASCII text, None, a bool, a small
                # int -- storable without the walk.
                if value is None or cls is bool or (cls is int and -_SMALL < value < _SMALL) or (
                    cls is str and (surrogates or value.isascii())
                ):
                    continue
                places.append((label, key, value))
    for key, value in envelope.items() if body else ():
        if key not in ("headers", "properties"):
            places.append(("", key, value))
    for label, key, value in places:
        found = limits.unstorable(value, 1, surrogates=surrogates)
        if found is not None:
            path, reason = found
            where = f"{label} {key!r}" if label else "the body" if key == "body" else f"the envelope's {key!r}"
            return (
                f"{where}{path} {reason}. Headers and properties are stored as JSON: str, int, finite float, bool, "
                "None, and lists and dicts of them (string keys). Convert the value (to a str or a list, say)."
            )
    return None


#: Integers below this in magnitude are always written as JSON.
_SMALL = 2**63


def _check_size(
    text: str, envelope: dict[str, Any], source: str, arg_names: Sequence[str], escape_surrogates: bool
) -> str:
    """``text`` as it will be stored, once its size is known to be within
    ``max_message_size`` (and its text to be UTF-8)."""
    from .settings import get_settings

    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            if not escape_surrogates:
                problem = _find_problem(envelope)
                raise EnqueueError(f"{source}: {problem or 'the message contains a lone surrogate, which is not text.'}") from None
            text = limits.escape_surrogates(text)
            size = len(text.encode("utf-8"))
    limit = get_settings().max_message_size
    if size <= limit:
        return text
    label, part = _largest_part(envelope, arg_names)
    raise MessageTooLarge(
        f"{source}: the message is {size:,} bytes, over the limit of {limit:,} bytes (the max_message_size setting, "
        f"JOBTABLE_MAX_MESSAGE_SIZE); its largest part is {label} ({part:,} bytes). Pass a reference to large data "
        "(a file path, an object-store key, a row id) instead of the data, or raise max_message_size.",
        size=size,
        limit=limit,
    )


def _largest_part(envelope: dict[str, Any], arg_names: Sequence[str]) -> tuple[str, int]:
    parts: list[tuple[str, Any]] = []
    body = envelope.get("body")
    decoded: Any = None
    if isinstance(body, str) and not (envelope.get("properties") or {}).get("body_encoding"):
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            decoded = None
    if isinstance(decoded, list) and len(decoded) >= 2 and isinstance(decoded[0], list) and isinstance(decoded[1], dict):
        for index, value in enumerate(decoded[0]):
            parts.append((f"argument {arg_names[index] if index < len(arg_names) else index}", value))
        for key, value in decoded[1].items():
            parts.append((f"argument {key!r}", value))
        if len(decoded) > 2:
            parts.append(("the canvas (callbacks, chain, chord)", decoded[2]))
    else:
        parts.append(("the body", body))
    for section, label in (("headers", "header"), ("properties", "property")):
        values = envelope.get(section)
        if isinstance(values, dict):
            parts.extend((f"{label} {key!r}", value) for key, value in values.items())
    sized = [(label, len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))) for label, value in parts]
    return max(sized, key=lambda item: item[1])
