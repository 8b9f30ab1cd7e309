"""What follows a task run by the native worker: the next chain step, the
``link`` callbacks, and a chord's counting.

Messages carry these steps as Celery does (``canvas.py``), and whoever runs
a step sends the next one, so no coordinator process is needed:

- on success, the next chain step and the callbacks are enqueued, and a
  chord part is counted -- in one transaction, before the worker writes this
  attempt's result (it does so in batches after ``run()`` returns);
- on final failure a chord part is counted as failed, so the chord ends (its
  body gets a ChordError) instead of waiting forever.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..db import engine as db_engine
from ..db import results as db_results
from ..db import clock, tables
from . import send
from .canvas import result_task, rows_for
from .context import Context
from .current import App, current_app
from .exceptions import ChordError
from .registry import registry

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

logger = logging.getLogger("jobtable.shim")


def has_followers(request: Context) -> bool:
    """Whether anything is sent after this call (its return value must then be JSON)."""
    return bool(request.chain or request.callbacks or (request.chord and request.group))


def follow(request: Context, encoded: Any) -> None:
    """Next chain step, link callbacks and chord counting, in one
    transaction; ``encoded`` is the task's return value as stored."""
    app = current_app()
    now = clock.utcnow()
    rows: list[dict[str, Any]] = []
    chain = list(request.chain or [])
    if chain:
        step = chain.pop()  # Celery keeps the rest reversed: the next step is last
        rows += rows_for(app, step, [encoded], now=now, parent_id=request.id, root_id=request.root_id, chain=chain)
    for callback in request.callbacks or []:
        rows += rows_for(app, callback, [encoded], now=now, parent_id=request.id, root_id=request.root_id)
    with db_engine.connect() as conn, conn.begin():
        send.insert_rows(rows, conn, dedupe=True)
        if request.chord and request.group:
            _count_part(conn, app, request, ok=True, outcome=encoded, now=now)


def count_failed_part(request: Context, outcome: str) -> None:
    """Count a chord part that failed for good (``outcome`` describes the error)."""
    now = clock.utcnow()
    try:
        with db_engine.connect() as conn, conn.begin():
            _count_part(conn, current_app(), request, ok=False, outcome=outcome, now=now)
    except Exception:
        logger.exception("Could not count the failed part %s of chord %s", request.id, request.group)


def _count_part(conn: Connection, app: App, request: Context, *, ok: bool, outcome: Any, now: datetime) -> None:
    """Count this part; the part that completes the count sends the body
    (exactly one does: the counter is updated in one UPDATE ... RETURNING,
    and a part is counted once whatever the number of times it ran)."""
    group_id, index = str(request.group), int(request.group_index or 0)
    stored = json.dumps({"ok": ok, "id": request.id, "value" if ok else "error": outcome})
    counted = db_results.chord_part_record(conn, group_id, index, stored, now)
    if counted is None:
        return
    done, size = counted
    if size is None or done < size:
        return
    outcomes = [json.loads(raw) for raw in db_results.chord_part_outcomes(conn, group_id)]
    body = dict(request.chord or {})
    failed = next((o for o in outcomes if not o["ok"]), None)
    if failed is None:
        values = [o["value"] for o in outcomes]
        send.insert_rows(
            rows_for(app, body, [values], now=now, parent_id=request.id, root_id=request.root_id), conn, dedupe=True
        )
    else:
        _chord_error(conn, app, body, f"Dependency {failed['id']} raised {failed['error']}", now)
    db_results.delete_chord_parts(conn, group_id)


def _chord_error(conn: Connection, app: App, body: dict[str, Any], message: str, now: datetime) -> None:
    """Record the body FAILED with a ChordError, as Celery does; it never runs."""
    # The task whose id chord(...)(body) returned: the body, or its chain's last step.
    last = result_task(body)
    options = last.get("options") or {}
    task = registry.tasks.get(last["task"])
    db_results.upsert_result(
        conn,
        {
            "task_id": options.get("task_id"),
            "task_name": last["task"],
            "queue": send.route(app, last["task"], task, [], {}, options),
            "attempt": 1,
            "status": tables.ERRORED,
            "ended_at": now,
            "error_type": f"{ChordError.__module__}.{ChordError.__qualname__}",
            "error_message": message,
        },
    )
