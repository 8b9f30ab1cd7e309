"""``link_error=`` / ``sig.on_error()``: what runs when a task fails, by
Celery's rules (``celery/backends/base.py``, ``_call_task_errbacks``).

- An errback whose task is defined in this process as a plain function
  taking more than one positional argument is *called here*, in the worker
  that ran the failed task, as ``errback(request, exc, traceback)`` followed
  by the signature's own arguments (Celery's "new-style" errback);
- any other (``bind=True``, a ``Task`` class, a task this process does not
  know) is *sent* as a task with the failed task's id as its first argument
  (unless the signature is immutable), ``parent_id`` the failed task
  (Celery's "old-style" errback).  In eager mode it runs inline.

Errbacks run when a task fails for good: not for a retry, not for a revoke
(as in Celery); a time limit is a failure.  An errback that raises is
logged: it never changes how the failed attempt is recorded.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from .. import params
from ..db import clock
from . import send
from .canvas import Signature, rows_for
from .context import Context
from .current import current_app
from .registry import registry

logger = logging.getLogger("jobtable.shim")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def takes_request(task: Any) -> bool:
    """Whether Celery would call this errback task with ``(request, exc,
    traceback)``: a function task (not ``bind=True``) of arity above one."""
    fun = getattr(task, "__wrapped__", None)
    if fun is None or not isinstance(inspect.getattr_static(task, "run", None), staticmethod):
        return False
    try:
        parameters = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return sum(1 for p in parameters if p.kind in _POSITIONAL) > 1


def as_dicts(errbacks: Any) -> list[dict[str, Any]]:
    """``link_error=`` as stored: a signature, a list of them, or their JSON form."""
    return send._signature_dicts("link_error", errbacks) if errbacks else []


def call_errbacks(request: Context, exc: BaseException, *, eager: bool = False) -> None:
    """Run the failed task's errbacks (``request.errbacks``, JSON forms)."""
    queued: list[dict[str, Any]] = []
    for errback in request.errbacks or []:
        name = str(errback.get("task"))
        task = registry.find(name)
        if task is None or not takes_request(task):
            queued.append(errback)
            continue
        args = params.decode(list(errback.get("args") or []))
        kwargs = params.decode(dict(errback.get("kwargs") or {}))
        try:
            # Celery forces the arguments in, even on an immutable signature.
            task(request, exc, exc.__traceback__, *args, **kwargs)
        except Exception:
            logger.exception("The errback %s of task %s[%s] failed", name, request.task, request.id)
    if not queued:
        return
    root_id = request.root_id or request.id
    try:
        if eager or request.is_eager:
            for errback in queued:
                _signature(errback).apply((request.id,), parent_id=request.id, root_id=root_id)
            return
        app = current_app()
        now = clock.utcnow()
        rows: list[dict[str, Any]] = []
        for errback in queued:
            rows += rows_for(app, errback, [request.id], now=now, parent_id=request.id, root_id=root_id)
        send.insert_rows(rows)
    except Exception:
        logger.exception("The errbacks of task %s[%s] could not be sent", request.task, request.id)


def _signature(sig: dict[str, Any]) -> Signature:
    options = params.decode(dict(sig.get("options") or {}))
    return Signature(
        sig.get("task"),
        params.decode(list(sig.get("args") or [])),
        params.decode(dict(sig.get("kwargs") or {})),
        options,
        immutable=bool(sig.get("immutable")),
    )
