"""Revokes of routed deliveries (issue 18): a routed member asks the
revoke table (``db/revokes_sql.py``, ``jobtable_revoke``) about what it has
received before it runs it, as the table worker does at every claim.

One statement per batch of received deliveries, not per job: when the
member is about to run the first unchecked delivery of its inbox, every
unchecked delivery there is checked at once (the inbox holds about one
prefetch window, ~50 ms of work).  A revoked delivery is not run: it gets
its REVOKED result (a CANCELLED result with Celery's ``TaskRevokedError``,
never started) and is acked once that result is written, like any other.
Matching is the table's: the task id, or one value of one stamped header.
A revoke recorded after its delivery was checked is not seen (as a Celery
worker that already holds the task in its prefetch would not see a revoke
broadcast it missed): the window is the inbox's, a few milliseconds to
one job's run time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy.engine import Engine

from ..db import engine as db_engine
from ..db import revokes_sql, tables

#: A delivery's key in the inbox: (channel generation, delivery tag).
Key = tuple[int, Any]


class RevokeCheck:
    def __init__(self) -> None:
        self._checked: set[Key] = set()
        self._revoked: dict[Key, str] = {}

    def check(self, engine: Engine, inbox: Iterable[tuple[Any, int]], now: datetime) -> None:
        """Ask about every delivery of ``inbox`` not asked about yet.
        Raises the database's errors (the member's loop handles them; the
        deliveries stay in the inbox)."""
        fresh = [(message, generation) for message, generation in inbox
                 if (generation, message.delivery_tag) not in self._checked]
        if not fresh:
            return
        rows = [_keys_row(index, message) for index, (message, _) in enumerate(fresh)]
        with db_engine.connect(engine) as conn, conn.begin():
            hits = revokes_sql.revoked_entries(conn, rows, now)
        for index, (message, generation) in enumerate(fresh):
            key = (generation, message.delivery_tag)
            self._checked.add(key)
            if index in hits:
                kind, name, value = hits[index]
                self._revoked[key] = "task id" if kind == revokes_sql.TASK else f"stamp {name}={value}"

    def pop(self, message: Any, generation: int) -> str | None:
        """Why the delivery is revoked (None: it is not); forgets it."""
        key = (generation, message.delivery_tag)
        self._checked.discard(key)
        return self._revoked.pop(key, None)

    def forget(self) -> None:
        """The channel is gone: its deliveries come again, to be asked about again."""
        self._checked.clear()
        self._revoked.clear()


def revoked_fields() -> dict[str, Any]:
    """The result columns of a revoked delivery (``revokes_sql.record_revoked``'s)."""
    return {"started_at": None, "error_type": revokes_sql.REVOKED_ERROR, "error_message": "revoked"}


REVOKED_STATUS = tables.CANCELLED


def _keys_row(index: int, message: Any) -> Any:
    """What ``revokes_sql.keys_of`` reads of a row, from a Kombu delivery:
    its task id and, only when it is stamped, its headers as JSON."""
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    task_id = headers.get("id")
    text = ""
    if headers.get("stamped_headers"):
        try:
            text = json.dumps({"headers": headers}, default=str)
        except Exception:  # noqa: BLE001 - a hostile header must not stop the member: matched by task id only
            text = ""
    return SimpleNamespace(id=index, task_id=task_id if isinstance(task_id, str) else None, message=text)
