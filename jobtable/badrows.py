"""What a bad row becomes: the one place that decides.

A ``jobtable_request`` row whose message cannot be decoded (not JSON, not an
object, a missing or ill-typed body/headers/properties, a body that does not
decode for its content type and encoding) can never succeed, however often it
is delivered.  Both the Kombu transport and the native worker decode each row
on its own with the functions below -- which never raise -- and move a bad
row out of the queue into a ``DEAD_LETTER`` result that keeps the raw message
and says why (``bury``).  The other rows of the same claim are delivered.
A dead letter is re-queued by hand (``jobtable retry``, the dashboard).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import messages
from .db import deadletters, tables

#: Longest reason stored (characters); the raw message is kept whole.
REASON_LIMIT = 1000
#: ``error_type`` of a dead letter.
ERROR_TYPE = "UndecodableMessage"
#: Content types whose bodies jobtable can check (others are delivered as they are).
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class BadRow:
    """Why a stored message cannot be decoded (text made safe, capped)."""

    reason: str


def safe_text(value: Any, limit: int = REASON_LIMIT) -> str:
    """``value`` as storable text: never raises, no NUL, no lone surrogate, capped."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - a raising __str__ must not stop the queue
        text = f"<unprintable {type(value).__name__}>"
    text = text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 30] + f"... [{len(text) - limit + 30} more characters]"
    return text


def _bad(reason: str) -> BadRow:
    return BadRow(safe_text(reason))


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to decode") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON ({exc})") from None


def decode_envelope(message: Any) -> dict[str, Any] | BadRow:
    """The stored Kombu envelope, or why it cannot be delivered.

    Checks what every consumer needs (a JSON object with a body, headers and
    properties of the right types) and, for JSON content, that the body
    decodes; bodies of other content types (pickle, msgpack...) are left to
    the consumer.
    """
    try:
        return _decode_envelope(message)
    except ValueError as exc:
        return _bad(str(exc))
    except Exception as exc:  # noqa: BLE001 - decoding must never stop a consumer
        return _bad(f"The message cannot be decoded ({type(exc).__name__}: {safe_text(exc, 200)})")


def _decode_envelope(message: Any) -> dict[str, Any]:
    if not isinstance(message, str):
        raise ValueError(f"The stored message is a {type(message).__name__}, not JSON text")
    envelope = _parse_json(message, "The stored message")
    if not isinstance(envelope, dict):
        raise ValueError(f"The stored message is a JSON {type(envelope).__name__}, not an object")
    if "body" not in envelope:
        raise ValueError("The stored message has no 'body'")
    for key in ("headers", "properties"):
        if envelope.get(key) is not None and not isinstance(envelope[key], dict):
            raise ValueError(f"The message's {key!r} is a {type(envelope[key]).__name__}, not an object")
    properties = envelope.get("properties") or {}
    info = properties.get("delivery_info")
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"The message's 'delivery_info' is a {type(info).__name__}, not an object")
    for key in ("content-type", "content-encoding"):
        if envelope.get(key) is not None and not isinstance(envelope[key], str):
            raise ValueError(f"The message's {key!r} is a {type(envelope[key]).__name__}, not a string")
    body = envelope["body"]
    encoding = properties.get("body_encoding")
    raw: bytes | None = None
    if encoding == "base64":
        if not isinstance(body, str):
            raise ValueError("The message's base64 body is not a string")
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("The message's body is not valid base64") from None
    elif encoding is not None:
        raise ValueError(f"The message's body_encoding {safe_text(encoding, 50)!r} is unknown (expected base64 or none)")
    content_type = envelope.get("content-type")
    if content_type in JSON_TYPES:
        if raw is not None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("The message's JSON body is not UTF-8") from None
            _parse_json(text, "The message's body")
        elif isinstance(body, str):
            _parse_json(body, "The message's body")
        elif not isinstance(body, (list, dict)):
            raise ValueError(f"The message's JSON body is a {type(body).__name__}, not text")
    return envelope


def decode_call(message: Any) -> messages.TaskCall | BadRow:
    """The task call a native worker runs, or why the row cannot be one."""
    envelope = decode_envelope(message)
    if isinstance(envelope, BadRow):
        return envelope
    try:
        return _decode_call(envelope)
    except ValueError as exc:
        return _bad(str(exc))
    except Exception as exc:  # noqa: BLE001
        return _bad(f"The task message cannot be decoded ({type(exc).__name__}: {safe_text(exc, 200)})")


def _decode_call(envelope: dict[str, Any]) -> messages.TaskCall:
    content_type = envelope.get("content-type", "application/json")
    if content_type not in JSON_TYPES:
        raise ValueError(
            f"The task message has content type {safe_text(content_type, 80)!r}; jobtable runs JSON messages only. "
            "Set Celery's task_serializer to 'json'."
        )
    headers = envelope.get("headers") or {}
    body = envelope["body"]
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode("utf-8")
    decoded = _parse_json(body, "The task body") if isinstance(body, str) else body
    if not isinstance(decoded, (list, tuple)) or len(decoded) < 2:
        raise ValueError("The task body is not [args, kwargs, embed] (Celery task protocol 2)")
    args, kwargs = decoded[0], decoded[1]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("The task body's args are not a list, or its kwargs not an object")
    if any(not isinstance(key, str) for key in kwargs):
        raise ValueError("The task body's kwargs have a key that is not a string")
    name, task_id = headers.get("task", ""), headers.get("id", "")
    if not isinstance(name, str) or not isinstance(task_id, str):
        raise ValueError("The message's 'task' or 'id' header is not a string")
    return messages.TaskCall(task_name=name, task_id=task_id, args=args, kwargs=kwargs, headers=headers)


def dead_letter_fields(reason: str) -> dict[str, Any]:
    """The result columns that say why a row is a dead letter."""
    return {
        "error_type": ERROR_TYPE,
        "error_message": safe_text(
            f"Dead letter: {reason} It was taken out of the queue; fix it and re-queue it with "
            "`jobtable retry <uuid>` or the dashboard."
        ),
    }


def bury(conn: Any, holder: str, bad: Sequence[tuple[int, str]], now: datetime) -> set[int]:
    """Move the rows ``bad`` ((row id, reason)) that ``holder`` still runs
    into DEAD_LETTER results, in the caller's transaction; returns the ids moved."""
    if not bad:
        return set()
    return deadletters.bury(conn, holder, [(rid, tables.DEAD_LETTER, dead_letter_fields(reason)) for rid, reason in bad], now)
