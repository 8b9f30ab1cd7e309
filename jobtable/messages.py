"""The one message format: a Kombu message carrying Celery's task protocol v2.

Every row of ``jobtable_request`` stores such a message whole (a Celery worker
gets exactly what was sent) and the columns the queue needs are extracted
from it at insert (``row_values``).  The Job API builds its messages with
``task_message``; the Kombu transport stores what Kombu hands it.

Envelope (what Kombu's virtual transports store)::

    {"body": "[args, kwargs, embed]", "content-type": "application/json",
     "content-encoding": "utf-8", "headers": {...}, "properties": {...}}
"""

from __future__ import annotations

import json
import os
import reprlib
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import states

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_repr = reprlib.Repr()
_repr.maxstring = 256
_repr.maxother = 256

#: Headers jobtable adds to Celery's; a Celery worker ignores them.
CONCURRENCY_KEY_HEADER = "concurrency_key"
RETRIES_HEADER = "jobtable_retries"
#: Present (``CUSTOM_LIMIT``) when the job's class overrides ``should_enqueue``:
#: its key groups jobs but is not unique, so the row's ``unique_key`` is NULL.
#: It travels in the message so that every later row of the job (retries,
#: deferrals, a retry by hand) keeps the class's rule.
CONCURRENCY_LIMIT_HEADER = "jobtable_concurrency_limit"
CUSTOM_LIMIT = "should_enqueue"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def new_task_id() -> str:
    return str(uuid.uuid4())


def argsrepr(value: Any) -> str:
    """Celery's ``argsrepr``/``kwargsrepr`` header of the arguments."""
    return _repr.repr(value)


def task_message(
    *,
    task_name: str,
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str,
    priority: int,
    eta: datetime | None,
    expires: datetime | None = None,
    attempt: int = 1,
    retries: int = 0,
    concurrency_key: str | None = None,
    custom_limit: bool = False,
    extra_headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Celery protocol v2 message; ``args``/``kwargs`` are already JSON-safe."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": eta.isoformat() if eta is not None else None,
        "expires": expires.isoformat() if expires is not None else None,
        "group": None,
        "group_index": None,
        "retries": attempt - 1,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr(args),
        "kwargsrepr": argsrepr(kwargs),
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        CONCURRENCY_KEY_HEADER: concurrency_key,
        RETRIES_HEADER: retries,
    }
    if custom_limit:
        # Only then: the messages of every other job stay as they were.
        headers[CONCURRENCY_LIMIT_HEADER] = CUSTOM_LIMIT
    if extra_headers:
        headers.update(extra_headers)
    return {
        "body": dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
        },
    }


def parse_time(value: Any) -> datetime | None:
    """Celery's ``eta``/``expires`` headers: ISO strings (naive means UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    else:
        parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def row_values(envelope: dict[str, Any], queue: str, now: datetime, message: str | None = None) -> dict[str, Any]:
    """The ``jobtable_request`` columns for a message published to ``queue``
    (``message``: the envelope already dumped).  New messages go through
    ``checks.checked_row``, which refuses what these columns cannot hold."""
    headers = envelope.get("headers") or {}
    properties = envelope.get("properties") or {}
    eta = parse_time(headers.get("eta"))
    run_at = eta if eta is not None and eta > now else now
    task_id = headers.get("id") or properties.get("correlation_id") or new_task_id()
    key = headers.get(CONCURRENCY_KEY_HEADER) or None
    return {
        "task_id": str(task_id),
        "task_name": str(headers.get("task") or ""),
        "queue": queue,
        "priority": int(properties.get("priority") or 0),
        "state": states.SCHEDULED if run_at > now else states.PENDING,
        "run_at": run_at,
        "expires_at": parse_time(headers.get("expires")),
        "concurrency_key": key,
        # One pending-or-running job per (task, key) unless the class sets
        # its own limit (enqueue_sql.insert_requests keeps this in step with
        # concurrency_key whatever a caller changes afterwards).
        "unique_key": key if headers.get(CONCURRENCY_LIMIT_HEADER) != CUSTOM_LIMIT else None,
        "attempt": int(headers.get("retries") or 0) + 1,
        "retries": int(headers.get(RETRIES_HEADER) or 0),
        "created_at": now,
        "message": dumps(envelope) if message is None else message,
    }


@dataclass(frozen=True)
class TaskCall:
    """The decoded body of a task message."""

    task_name: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]


def decode_task(message: str | dict[str, Any]) -> TaskCall:
    """Parse a stored message into the call it describes (JSON bodies only)."""
    envelope = json.loads(message) if isinstance(message, str) else message
    headers = envelope.get("headers") or {}
    body: Any = envelope.get("body")  # any JSON value: a string, or the decoded [args, kwargs, embed]
    encoding = (envelope.get("properties") or {}).get("body_encoding")
    if encoding == "base64":
        import base64

        body = base64.b64decode(body).decode("utf-8")
    content_type = envelope.get("content-type", "application/json")
    if content_type != "application/json":
        raise ValueError(
            f"Task message {headers.get('id')!r} has content type {content_type!r}; jobtable runs JSON messages only. "
            "Set Celery's task_serializer to 'json'."
        )
    decoded = json.loads(body) if isinstance(body, str) else body
    args, kwargs = decoded[0], decoded[1]
    return TaskCall(
        task_name=headers.get("task", ""),
        task_id=headers.get("id", ""),
        args=args,
        kwargs=kwargs,
        headers=headers,
    )


def retry_message(message: str, attempt: int, eta: datetime | None) -> str:
    """The stored message of ``attempt`` of the same task (Celery keeps the id)."""
    envelope = json.loads(message)
    headers = envelope.setdefault("headers", {})
    headers["retries"] = attempt - 1
    headers["eta"] = eta.isoformat() if eta is not None else None
    return dumps(envelope)
