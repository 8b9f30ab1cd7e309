"""Celery task states derived from jobtable's tables.

Shared by the Celery result backend (``backend.py``) and the Celery-free
``AsyncResult`` (``result.py``), so both report the same state for the same
rows.  This module must not import Celery: the shim uses it with Celery
uninstalled.  The state names are Celery's own strings.

- ``PENDING``/``RETRY``/``STARTED`` come from the request row while the job is
  waiting or running (RETRY: waiting for an attempt after the first);
- ``SUCCESS``/``FAILURE``/``REVOKED`` (and ``RETRY`` for a failed attempt that
  was retried) come from the newest result row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .. import params
from ..db import tables
from ..db.results import JobState

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
#: Celery's own states; any other is a custom one (update_state).
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, REVOKED, RETRY, IGNORED, "REJECTED"})

#: jobtable result status -> Celery state of a finished attempt.  (STARTED is
#: the status the Celery backend writes for an attempt a Celery worker started.)
CELERY_STATE = {
    tables.SUCCESSFUL: SUCCESS,
    tables.ERRORED: FAILURE,
    tables.LOST: FAILURE,
    tables.CANCELLED: REVOKED,
    # A deferred attempt (the shim's self.retry, DeferJob) is always followed
    # by another attempt, which the request row reports while it exists.
    tables.DEFERRED: RETRY,
    STARTED: STARTED,
}

#: Celery state -> jobtable result status.
JOBTABLE_STATUS = {
    SUCCESS: tables.SUCCESSFUL,
    FAILURE: tables.ERRORED,
    RETRY: tables.ERRORED,
    REVOKED: tables.CANCELLED,
    # A Celery worker acks before it runs a task (unless acks_late), so the
    # request row is gone while it runs: with task_track_started, the attempt's
    # result row says STARTED until the final state replaces it.
    STARTED: STARTED,
}

DecodeMeta = Callable[[str], dict[str, Any]]


def decode_json_meta(raw: str) -> dict[str, Any]:
    """The ``meta`` column as the Celery backend wrote it (JSON only)."""
    meta: dict[str, Any] = json.loads(raw)
    return meta


def active_state(active: Any, started: bool = True) -> str:
    """State of a task whose request row is waiting or running.

    ``started``: whether a running row reads STARTED.  The Celery backend
    passes False where Celery would not say STARTED (``task_track_started``
    off, or a Celery worker's claim, which may only be prefetched: that
    worker stores STARTED itself when it tracks)."""
    if active.state == tables.RUNNING and started:
        return STARTED
    if active.attempt > 1:
        return RETRY
    return PENDING


def _pending(task_id: str, state: str = PENDING, result: Any = None) -> dict[str, Any]:
    return {"task_id": task_id, "status": state, "result": result, "traceback": None, "children": []}


def task_meta(
    task_id: str,
    found: JobState,
    decode: DecodeMeta = decode_json_meta,
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    started: Callable[[Any], bool] | None = None,
) -> dict[str, Any]:
    """Celery's task meta (``status``, ``result``, ``traceback``...) of ``task_id``.

    ``decode``/``finish``: how a ``meta`` column written by the Celery backend
    is read (the backend passes its serializer and ``meta_from_decoded``).
    ``started``: whether a running request row reads STARTED (default: yes).
    """
    newest, active = found.result, found.active
    if active is not None and (newest is None or active.attempt > newest.attempt):
        if active.attempt == 1 or _recorded_before(newest, active):
            previous = meta_of(newest, decode, finish)["result"] if newest is not None else None
            return _pending(task_id, active_state(active, started(active) if started else True), previous)
        # A retry whose asking attempt is not recorded yet: a Celery worker
        # publishes the retry first and stores RETRY (with the exception)
        # after, so until then what was stored stands, as on Redis.
    if newest is None:
        return _pending(task_id)
    return meta_of(newest, decode, finish)


def _recorded_before(newest: Any, active: Any) -> bool:
    """Whether the attempt before ``active`` has its final result row."""
    return newest is not None and newest.attempt == active.attempt - 1 and newest.status != STARTED


def error_result(row: Any, status: str) -> dict[str, Any]:
    """Celery's exception dict for a failed/revoked attempt written by the native worker."""
    module, _, name = (row.error_type or "").rpartition(".")
    if status == REVOKED and not name:
        module, name = "celery.exceptions", "TaskRevokedError"
    return {
        "exc_type": name or "Exception",
        "exc_module": module or "builtins",
        "exc_message": [row.error_message or row.status],
    }


def meta_of(
    row: Any, decode: DecodeMeta = decode_json_meta, finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Celery's meta of one result row."""
    if row.meta:
        meta = decode(row.meta)
        # A failed attempt that was retried later (e.g. `jobtable retry`).
        if row.retried and meta.get("status") == FAILURE:
            meta["status"] = RETRY
        return finish(meta) if finish is not None else meta
    # Written by the native worker: rebuild Celery's view from the columns.
    status = CELERY_STATE.get(row.status, PENDING)
    if row.retried and status == FAILURE:
        status = RETRY
    result: Any = None
    if status == SUCCESS and row.return_value is not None:
        result = params.decode(json.loads(row.return_value))
    elif status in (FAILURE, RETRY, REVOKED):
        result = error_result(row, status)
    return {
        "task_id": row.task_id,
        "status": status,
        "result": result,
        "traceback": row.traceback,
        "children": [],
        "date_done": row.ended_at,
        "name": row.task_name,
        "queue": row.queue,
        "worker": row.worker_id,
        "retries": row.attempt - 1,
    }
