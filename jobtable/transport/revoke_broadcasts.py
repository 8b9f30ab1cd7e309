"""Celery's remote-control revokes read from the broadcast being published,
so the channel can record them (db/revokes_sql.py) in the same transaction
as the broadcast: ``app.control.revoke(id)`` / ``AsyncResult.revoke()``
(method ``revoke``) and ``app.control.revoke_by_stamped_headers`` (method
``revoke_by_stamped_headers``), sent to the ``<namespace>.pidbox`` fanout
exchange as Kombu's Mailbox does.  Recorded even when no worker is bound to
hear it: that is the case the database is for."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from ..db.revokes_sql import STAMP, TASK, TERMINATE


def _body(message: dict[str, Any]) -> Any:
    body = message.get("body")
    properties = message.get("properties") or {}
    if properties.get("body_encoding") == "base64" and isinstance(body, str):
        body = base64.b64decode(body)
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8")
    return json.loads(body) if isinstance(body, str) else body


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def revokes_in(exchange: str, message: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The ``(kind, name, value)`` revokes a broadcast on ``exchange``
    carries; [] for anything else (or a body that is not JSON: Celery's
    default serializer is JSON; a pickled broadcast is not read)."""
    if not exchange.endswith(".pidbox"):
        return []
    try:
        body = _body(message)
    except (ValueError, TypeError, UnicodeDecodeError):
        return []
    if not isinstance(body, dict):
        return []
    method, arguments = body.get("method"), body.get("arguments") or {}
    if not isinstance(arguments, dict):
        return []
    if method == "revoke":
        ids = [task_id for task_id in _listed(arguments.get("task_id")) if task_id is not None]
        # terminate=True: the native worker running one stops it too
        # (db/cancels_sql.py; a Celery worker acts on the broadcast itself).
        stop = [(TERMINATE, "", task_id) for task_id in ids] if arguments.get("terminate") else []
        return [(TASK, "", task_id) for task_id in ids] + stop
    if method == "revoke_by_stamped_headers":
        headers = arguments.get("headers") or {}
        if isinstance(headers, list):  # "name=value" strings, as Celery's command line sends
            headers = dict(h.split("=", 1) for h in headers if isinstance(h, str) and "=" in h)
        if not isinstance(headers, dict):
            return []
        return [(STAMP, str(name), value) for name, values in headers.items() for value in _listed(values)]
    return []


def asks_revoked(payload: dict[str, Any]) -> bool:
    """Whether a delivered pidbox message is ``celery inspect revoked``."""
    try:
        body = _body(payload)
    except (ValueError, TypeError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("method") == "revoked"


def merge_into_celery_worker(revokes: list[tuple[str, str, str]]) -> None:
    """Give this process's Celery worker state (if it is a Celery worker)
    the revokes the database holds, before it answers ``inspect revoked``:
    a worker started after a revoke lists it too.  The transport drops
    revoked messages itself; this only makes the answer true."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return
    for kind, name, value in revokes:
        if kind == TASK:
            if value not in state.revoked:
                state.revoked.add(value)
        elif kind == STAMP:
            known = state.revoked_stamps.get(name)
            known = list(known) if isinstance(known, (list, tuple)) else ([] if known is None else [known])
            if value not in known:
                state.revoked_stamps[name] = [*known, value]


def runs_celery_revokes(callback: Any) -> bool:
    """Whether a message given to ``callback`` (the channel's consume
    callback of its queue) reaches a Celery worker's task handler, which
    discards a task its memory holds revoked as it does on any broker: the
    ``task_revoked`` signal, REVOKED in the app's result backend (a chord
    part failing its chord), the ack.  Anything else (a plain Kombu
    consumer, a Celery version that names it otherwise) is False, and the
    transport ends the message REVOKED itself, undelivered."""
    inner = getattr(callback, "consumer_callback", None)  # set by Channel.basic_consume
    on_message = getattr(getattr(inner, "__self__", None), "on_message", None)
    return (
        getattr(on_message, "__module__", None) == "celery.worker.consumer.consumer"
        and getattr(on_message, "__name__", None) == "on_task_received"
        and "celery.worker.state" in sys.modules
    )
