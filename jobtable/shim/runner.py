"""Running shim tasks in the native worker: the dispatch hook.

The worker hands messages whose task name is not a registered Job to the
functions in ``jobtable.worker.dispatch.RUNNERS``; ``prepare`` is one.  It
builds the task's ``TaskJob`` from the message (arguments *and* headers: id,
retries, group, canvas steps); the worker then runs it (``TaskJob.run``,
with what follows a task in ``followups.py``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .. import params
from ..db import engine as db_engine
from ..db import clock, revokes_sql
from ..messages import TaskCall
from ..worker import hooks
from ..ratelimits import parse_rate
from ..worker.dispatch import RATE_LIMITS, REQUEUE_ON_LOST, RUNNERS, Prepared, current_row, expired
from . import signals
from .current import App, current_or_none
from .registry import registry
from .task import Task


def _decode_arguments(name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    decoded_args = params.decode(args)
    decoded_kwargs = params.decode(kwargs)
    if params.contains_references(decoded_args) or params.contains_references(decoded_kwargs):
        with params.model_session() as session:
            where = f"{name} argument"
            decoded_args = params.resolve(decoded_args, session, where)
            decoded_kwargs = {k: params.resolve(v, session, f"{where} {k!r}") for k, v in decoded_kwargs.items()}
            session.expunge_all()
    return decoded_args, decoded_kwargs


def prepare(call: TaskCall) -> Prepared | None:
    """The dispatch hook: a runnable job for a shim task's message, or None."""
    task = registry.find(call.task_name)
    if not isinstance(task, Task):  # every registered task is one (decorators.py)
        return None
    args, kwargs = _decode_arguments(task.name, call.args, call.kwargs)
    job = task.job_class(*args, **kwargs)
    job._call = call
    job._embed = _embed(call)
    if call.task_id in revokes_sql.flagged:
        revokes_sql.flagged.discard(call.task_id)
        _record_revoked()
        job._revoked = True  # TaskJob.run sends task_revoked and raises TaskRevokedError
    elif call.task_id in expired:
        # Past its expiry (worker/execute.py hands it over): REVOKED, as a
        # Celery worker records an expired task it receives.
        expired.discard(call.task_id)
        _record_revoked("expired")
        job._revoked = job._expired = True
    hard, soft = (list(call.headers.get("timelimit") or []) + [None, None])[:2]
    limits = [float(x) for x in (hard, soft, task.time_limit, task.soft_time_limit) if x]
    # One limit in jobtable: the job is interrupted (JobTimeout) when it passes.
    return Prepared(job=job, timeout=min(limits) if limits else None)


def _record_revoked(reason: str = "revoked") -> None:
    """A revoked shim task handed to us by the claim (``_flag_revokes``):
    its REVOKED result, as the claim would have written it.  The worker's
    own row for the attempt (the TaskRevokedError raised next) then
    repeats (task id, attempt) and is skipped."""
    row = current_row.get()
    if row is None:
        return
    with db_engine.connect() as conn, conn.begin():
        revokes_sql.record_revoked(conn, [row], clock.utcnow(), reason)


def _flag_revokes() -> None:
    """Revoked rows of shim tasks reach the runner flagged instead of ending
    in the claim, so that ``task_revoked`` is sent (and a chord part counted)
    as a Celery worker does when it receives a revoked task."""
    revokes_sql.runner_revokes["shim"] = lambda row: row.task_name in registry.tasks


def _embed(call: TaskCall) -> dict[str, Any]:
    """The canvas steps of the message (callbacks, chain, chord): the third
    item of its body, which the TaskCall leaves out -- read from the claimed
    row the worker exposes while runners prepare it."""
    embed = getattr(call, "embed", None)
    if embed is None:
        row = current_row.get()
        embed = _body_embed(row.message) if row is not None and getattr(row, "message", None) else None
    return dict(embed or {})


def _body_embed(message: str) -> dict[str, Any] | None:
    envelope = json.loads(message)
    body = envelope.get("body")
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode("utf-8")
    decoded = json.loads(body) if isinstance(body, str) else body
    if isinstance(decoded, list) and len(decoded) > 2 and isinstance(decoded[2], dict):
        return decoded[2]
    return None


class WorkerInfo:
    """The sender of ``worker_ready`` / ``worker_shutdown``: what handlers
    written for Celery read of its consumer and worker."""

    def __init__(self, hostname: str) -> None:
        self.hostname = f"jobtable@{hostname}"
        self.app: App | None = current_or_none()

    def __repr__(self) -> str:
        return f"<worker {self.hostname} (jobtable)>"


def _worker_ready(hostname: str) -> None:
    signals.worker_ready.send(sender=WorkerInfo(hostname))


def _worker_stopped(hostname: str) -> None:
    signals.worker_shutdown.send(sender=WorkerInfo(hostname))


def _member_started(hostname: str) -> None:
    # Celery's prefork pool sends its node name.
    signals.worker_process_init.send(sender=f"jobtable@{hostname}")


def _requeues_on_lost(row: Any) -> bool:
    task = registry.tasks.get(row.task_name)
    return isinstance(task, Task) and task.requeues_on_lost()


def _rate_of(name: str) -> float | None:
    """Tokens per second of a shim task (its rate_limit, else the app's
    task_default_rate_limit, as Celery reads them); None: no limit."""
    task = registry.tasks.get(name)
    if not isinstance(task, Task):
        return None
    if task.rate_limit is not None:
        return parse_rate(task.rate_limit, f"rate_limit of task {name!r}")
    owner = task._bound_app or current_or_none()
    default = owner.conf.get("task_default_rate_limit") if owner is not None else None
    return parse_rate(default, "task_default_rate_limit")


def install() -> None:
    if prepare not in RUNNERS:
        RUNNERS.append(prepare)
    if _rate_of not in RATE_LIMITS:
        RATE_LIMITS.append(_rate_of)
    if _requeues_on_lost not in REQUEUE_ON_LOST:
        REQUEUE_ON_LOST.append(_requeues_on_lost)
    _flag_revokes()
    for hook_list, hook in (
        (hooks.WORKER_READY, _worker_ready),
        (hooks.MEMBER_STARTED, _member_started),
        (hooks.WORKER_STOPPED, _worker_stopped),
    ):
        if hook not in hook_list:
            hook_list.append(hook)
