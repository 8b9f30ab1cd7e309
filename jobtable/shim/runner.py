"""Running shim tasks in the native worker.

The worker hands messages whose task name is not a registered Job to the
functions in ``jobtable.worker.dispatch.RUNNERS``; ``prepare`` is one.  It
builds the task's ``TaskJob`` from the message (arguments *and* headers: id,
retries, group, canvas steps), and ``run_task`` executes it:

- ``self.retry()`` raises ``Retry``, a ``DeferJob``: the worker records the
  attempt DEFERRED and enqueues attempt + 1 of the same task id when due;
- on success, the next chain step and ``link`` callbacks are enqueued, and a
  chord part is counted -- in one transaction, before the worker writes this
  attempt's result (it does so in batches after ``run()`` returns);
- on final failure a chord part is counted as failed, so the chord ends (its
  body gets a ChordError) instead of waiting forever.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .. import params
from ..db import engine as db_engine
from ..db import results as db_results
from ..db import clock, tables
from ..messages import TaskCall
from ..middleware import current_job
from ..worker.dispatch import RUNNERS, Prepared, current_row
from . import send
from .exceptions import ChordError, Retry
from .states import FAILURE, SUCCESS
from .task import Context, TaskJob, _call_handler, _ExceptionInfo, execute, registry

logger = logging.getLogger("jobtable.shim")


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
    if task is None:
        return None
    args, kwargs = _decode_arguments(task.name, call.args, call.kwargs)
    job = task.job_class(*args, **kwargs)
    job._call = call
    job._embed = _embed(call)
    hard, soft = (list(call.headers.get("timelimit") or []) + [None, None])[:2]
    limits = [float(x) for x in (hard, soft, task.time_limit, task.soft_time_limit) if x]
    # One limit in jobtable: the job is interrupted (JobTimeout) when it passes.
    return Prepared(job=job, timeout=min(limits) if limits else None)


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
        import base64

        body = base64.b64decode(body).decode("utf-8")
    decoded = json.loads(body) if isinstance(body, str) else body
    if isinstance(decoded, list) and len(decoded) > 2 and isinstance(decoded[2], dict):
        return decoded[2]
    return None


def context_of(job: TaskJob) -> Context:
    call = job._call
    if call is None:  # run() called outside a worker
        return Context(task=job.task.name, args=job.args, kwargs=job.kwargs, called_directly=False)
    h = call.headers
    embed = job._embed
    running = current_job()
    return Context(
        id=call.task_id,
        task=call.task_name,
        args=job.args,
        kwargs=job.kwargs,
        retries=int(h.get("retries") or 0),
        is_eager=False,
        eta=h.get("eta"),
        expires=h.get("expires"),
        headers=h,
        root_id=h.get("root_id"),
        parent_id=h.get("parent_id"),
        group=h.get("group"),
        group_index=h.get("group_index"),
        chord=embed.get("chord"),
        chain=embed.get("chain"),
        callbacks=embed.get("callbacks"),
        errbacks=embed.get("errbacks"),
        delivery_info={"routing_key": running.queue, "priority": running.priority} if running else {},
        hostname=running.worker_id if running else None,
        origin=h.get("origin"),
        shadow=h.get("shadow"),
        timelimit=tuple(h.get("timelimit") or (None, None)),
        called_directly=False,
    )


def run_task(job: TaskJob) -> Any:
    task = job.task
    request = context_of(job)
    args, kwargs = request.args, request.kwargs
    try:
        value = execute(task, request)
        # Encoded now: a value the next step cannot receive fails this task.
        encoded = params.encode(value, f"the return value of {task.name}") if _has_followers(request) else None
    except Retry as retry:
        _call_handler(task.on_retry, retry.exc or retry, request.id, args, kwargs, _ExceptionInfo(retry))
        raise
    except BaseException as exc:
        einfo = _ExceptionInfo(exc)
        _call_handler(task.on_failure, exc, request.id, args, kwargs, einfo)
        _call_handler(task.after_return, FAILURE, exc, request.id, args, kwargs, einfo)
        if request.chord and request.group:
            _chord_part(request, ok=False, outcome=f"{type(exc).__name__}({str(exc)!r})")
        raise
    _call_handler(task.on_success, value, request.id, args, kwargs)
    _call_handler(task.after_return, SUCCESS, value, request.id, args, kwargs, None)
    if _has_followers(request):
        _follow(request, encoded)
    return value


def _has_followers(request: Context) -> bool:
    return bool(request.chain or request.callbacks or (request.chord and request.group))


def _follow(request: Context, encoded: Any) -> None:
    """Next chain step, link callbacks and chord counting, in one transaction."""
    from .app import current_app
    from .canvas import rows_for

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


def _chord_part(request: Context, *, ok: bool, outcome: Any) -> None:
    from .app import current_app

    now = clock.utcnow()
    try:
        with db_engine.connect() as conn, conn.begin():
            _count_part(conn, current_app(), request, ok=ok, outcome=outcome, now=now)
    except Exception:
        logger.exception("Could not count the failed part %s of chord %s", request.id, request.group)


def _count_part(conn: Any, app: Any, request: Context, *, ok: bool, outcome: Any, now: Any) -> None:
    """Count this part; the part that completes the count sends the body
    (exactly one does: the counter is updated in one UPDATE ... RETURNING,
    and a part is counted once whatever the number of times it ran)."""
    from .canvas import rows_for

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


def _chord_error(conn: Any, app: Any, body: dict[str, Any], message: str, now: Any) -> None:
    """Record the body FAILED with a ChordError, as Celery does; it never runs."""
    from .canvas import result_task

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


def install() -> None:
    if prepare not in RUNNERS:
        RUNNERS.append(prepare)
