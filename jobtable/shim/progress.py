"""``self.update_state(state="PROGRESS", meta={...})``: a custom state, read
back by ``AsyncResult(id).state`` / ``.info`` (and shown on the dashboard)
while the task runs.

Stored as the Celery result backend stores it (``backend.py``): an
unfinished ``jobtable_result`` row of the running attempt (status STARTED)
whose ``meta`` keeps the state's name and its meta, so the Celery backend,
the shim and the dashboard all read it the same way.  The native worker
writes an attempt's final row with "skip if (task_id, attempt) exists", so
the task removes its custom-state row as it ends (``clear``), before the
worker writes the final one; until then the custom state stands.  If the
worker dies while the task runs, the last custom state stays, as it does
in Celery (whose result backend never hears of a killed task either).
"""

from __future__ import annotations

import json
from typing import Any

from .. import limits, params, safetext
from ..db import engine as db_engine
from ..db import results as db_results
from ..db import clock
from ..middleware import current_job
from .context import Context
from .exceptions import NotSupported
from .states import READY_STATES, STARTED

#: Attempts of this process with a custom-state row (task id -> attempt).
_written: dict[str, int] = {}


def _state_name(state: Any) -> str:
    if not isinstance(state, str):
        raise TypeError(f"update_state(state={limits.short(state)}): the state must be a string, such as 'PROGRESS'.")
    if not state.strip():
        raise ValueError("update_state(state=''): give the state a name, such as 'PROGRESS'.")
    params.encode(state, "update_state(state=...)")  # no lone surrogates: the row is UTF-8
    if state in READY_STATES:
        raise NotSupported(
            f"update_state(state={state!r})",
            "The final state is recorded when the task returns or raises; report progress with a custom "
            "state (update_state(state='PROGRESS', meta=...)).",
        )
    return state


def store(request: Context, name: str, task_id: str | None, state: Any, meta: Any) -> None:
    """Write ``state``/``meta`` for the running task ``request``."""
    state = _state_name(state)
    if task_id is not None and task_id != request.id:
        raise NotSupported(
            "update_state(task_id=<another task>)",
            "A task updates its own state (task_id omitted, or self.request.id).",
        )
    encoded_meta = params.encode(meta, "update_state(meta=...)")
    if request.called_directly or request.is_eager or request.id is None:
        return  # not run by a worker: no row to report on (the call is checked all the same)
    running = current_job()
    attempt = running.attempt if running is not None else int(request.retries or 0) + 1
    now = clock.utcnow()
    meta_json = json.dumps(
        {
            "status": state,
            "result": encoded_meta,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": request.id,
        }
    )
    from ..settings import get_settings

    limit = get_settings().max_message_size
    if len(meta_json) > limit:
        raise ValueError(
            f"update_state(meta=...) is {len(meta_json):,} characters as JSON, over max_message_size "
            f"({limit:,}): report a summary (counts, a percentage), not the data."
        )
    values = {
        "task_id": request.id,
        "task_name": safetext.safe_str(name, safetext.NAME_LIMIT),
        "queue": running.queue if running is not None else (request.delivery_info or {}).get("routing_key") or "",
        "attempt": attempt,
        "status": STARTED,
        "started_at": now,
        "ended_at": now,
        "worker_id": running.worker_id if running is not None else None,
        "meta": meta_json,
    }
    with db_engine.connect() as conn, conn.begin():
        db_results.upsert_result(conn, values, only_unfinished=True)
    _written[request.id] = attempt


def clear(request: Context) -> None:
    """The task is ending: remove its custom-state row, if it wrote one."""
    if request.id is None:
        return
    attempt = _written.pop(request.id, None)
    if attempt is None:
        return
    with db_engine.connect() as conn, conn.begin():
        db_results.delete_unfinished(conn, request.id, attempt)
