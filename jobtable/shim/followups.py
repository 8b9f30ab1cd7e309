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
from ..middleware import current_job
from . import errbacks, send
from .canvas import ChordStart, result_task, rows_for, start_chords
from .context import Context
from .current import App, current_app
from .exceptions import ChordError, NotSupported
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
    starts: list[ChordStart] = []
    chain = list(request.chain or [])
    if chain:
        step = chain.pop()  # Celery keeps the rest reversed: the next step is last
        rows += rows_for(
            app,
            step,
            [encoded],
            now=now,
            parent_id=request.id,
            root_id=request.root_id,
            chain=chain,
            chord_starts=starts,
        )
    for callback in request.callbacks or []:
        rows += rows_for(
            app, callback, [encoded], now=now, parent_id=request.id, root_id=request.root_id, chord_starts=starts
        )
    failed_body = None
    with db_engine.connect() as conn, conn.begin():
        # A chord step (chain(a, group(b, c), d)): its counter row with its header.
        start_chords(conn, starts, now)
        send.insert_rows(rows, conn, dedupe=True)
        if request.chord and request.group:
            failed_body = _count_part(conn, app, request, ok=True, outcome=encoded, now=now)
    _body_errbacks(failed_body)


def add_to_chord(request: Context, sig: Any) -> Any:
    """Celery's ``self.add_to_chord(sig)``: ``sig`` becomes one more part of
    the chord the running task belongs to (the body gets its value last).
    The chord's size grows and the part is sent in one transaction."""
    if not request.chord or not request.group:
        raise ValueError("Current task is not member of any chord")
    if request.is_eager:
        raise ValueError("add_to_chord() needs a chord sent to a worker; eager chords run their header at once.")
    if getattr(sig, "subtask_type", None) is not None or not hasattr(sig, "to_dict"):
        raise NotSupported(
            f"add_to_chord({sig!r})", "Add one task signature (task.s(...)) per call; a chord part is one task."
        )
    app = current_app()
    now = clock.utcnow()
    sig = sig.clone()
    result = sig.freeze()
    with db_engine.connect() as conn, conn.begin():
        size = db_results.grow_chord(conn, str(request.group))
        if size is None:
            raise ValueError(f"The chord {request.group} of this task is not known to the database (already ended?).")
        rows = rows_for(
            app,
            sig.to_dict(),
            [],
            now=now,
            root_id=request.root_id,
            group_id=str(request.group),
            group_index=size - 1,
            chord=dict(request.chord),
        )
        send.insert_rows(rows, conn)
    return result


def replace(request: Context, sig: Any) -> None:
    """Celery's ``self.replace(sig)``, on the worker: ``sig`` is sent under
    the running task's id (the next attempt number, so this attempt's row
    and the replacement's do not collide), with what followed this task:
    the rest of its chain, its callbacks and errbacks, its chord part."""
    kind = getattr(sig, "subtask_type", None)
    if kind not in (None, "chain") or not hasattr(sig, "to_dict"):
        raise NotSupported(
            f"replace() with {sig!r}", "Replace a task with a task signature or a chain (task.s(...) | ...)."
        )
    if kind == "chain" and request.chord:
        raise NotSupported("replace() of a chord part with a chain", "Replace a chord part with one task signature.")
    if request.id is None:
        raise RuntimeError("replace() needs a task run by a worker.")
    app = current_app()
    now = clock.utcnow()
    sig = sig.clone()
    last = sig.tasks[-1] if kind == "chain" else sig
    for callback in request.callbacks or []:
        last.options.setdefault("link", []).append(callback)
    for errback in request.errbacks or []:
        last.options.setdefault("link_error", []).append(errback)
    sig.freeze(request.id)  # a chain's last step takes the id
    running = current_job()
    attempt = (running.attempt if running is not None else int(request.retries or 0) + 1) + 1
    nesting = int((request.headers or {}).get("replaced_task_nesting") or 0) + 1
    # The next attempt of this id (headers win over the message's own), so
    # this attempt's result row and the replacement's do not collide.
    last.options["headers"] = {
        **dict(last.options.get("headers") or {}),
        "retries": attempt - 1,
        "replaced_task_nesting": nesting,
    }
    rows = rows_for(
        app,
        sig.to_dict(),
        [],
        now=now,
        parent_id=request.parent_id,
        root_id=request.root_id,
        chain=list(request.chain or []) or None,
        group_id=str(request.group) if request.chord and request.group else None,
        group_index=request.group_index if request.chord else None,
        chord=dict(request.chord) if request.chord else None,
    )
    with db_engine.connect() as conn, conn.begin():
        if len(send.insert_rows(rows, conn)) != len(rows):
            raise RuntimeError(f"The replacement of {request.task}[{request.id}] was not enqueued (its concurrency key is taken).")


def count_failed_part(request: Context, outcome: str) -> None:
    """Count a chord part that failed for good (``outcome`` describes the error)."""
    now = clock.utcnow()
    try:
        with db_engine.connect() as conn, conn.begin():
            failed_body = _count_part(conn, current_app(), request, ok=False, outcome=outcome, now=now)
    except Exception:
        logger.exception("Could not count the failed part %s of chord %s", request.id, request.group)
        return
    _body_errbacks(failed_body)


def fail_chain_members(request: Context, exc: BaseException, outcome: str) -> None:
    """A chain step failed for good (or was revoked): the steps after it never
    run.  As Celery's ``mark_as_failure``, a later step that ends a member of
    a chord header (its options carry the chord: canvas_rows.member_step) is
    recorded FAILED with this error and counts its part as failed, so the
    chord ends (its body gets a ChordError naming that step) instead of
    waiting forever."""
    app = current_app()
    for step in request.chain or []:
        options = step.get("options") or {}
        if not isinstance(options.get("chord"), dict) or options.get("group_id") is None:
            continue
        member = Context(
            id=options.get("task_id"),
            task=step.get("task"),
            root_id=request.root_id,
            group=options["group_id"],
            group_index=options.get("group_index"),
            chord=options["chord"],
            called_directly=False,
        )
        now = clock.utcnow()
        try:
            with db_engine.connect() as conn, conn.begin():
                if member.id is not None:
                    _record_failure(conn, app, step, str(member.id), exc, now)
                failed_body = _count_part(conn, app, member, ok=False, outcome=outcome, now=now)
        except Exception:
            logger.exception("Could not count the chain step %s of chord %s as failed", member.id, member.group)
            continue
        _body_errbacks(failed_body)


def _record_failure(
    conn: Connection, app: App, step: dict[str, Any], task_id: str, exc: BaseException, now: datetime
) -> None:
    options = step.get("options") or {}
    kind = type(exc)
    db_results.upsert_result(
        conn,
        {
            "task_id": task_id,
            "task_name": step["task"],
            "queue": send.route(app, step["task"], registry.tasks.get(step["task"]), [], {}, options),
            "attempt": 1,
            "status": tables.ERRORED,
            "ended_at": now,
            "error_type": f"{kind.__module__}.{kind.__qualname__}",
            "error_message": str(exc),
        },
        only_new=True,
    )


def _body_errbacks(failed: tuple[dict[str, Any], str] | None) -> None:
    """A chord whose body failed with a ChordError: the body's errbacks run,
    as Celery's ``chord_error_from_stack`` runs them (with a request made
    from the body's signature)."""
    if failed is None:
        return
    body, message = failed
    last = result_task(body)
    options = last.get("options") or {}
    if not options.get("link_error"):
        return
    request = Context(
        id=options.get("task_id"),
        task=last.get("task"),
        args=tuple(last.get("args") or ()),
        kwargs=dict(last.get("kwargs") or {}),
        errbacks=list(options["link_error"]),
        delivery_info={},
        called_directly=False,
    )
    errbacks.call_errbacks(request, ChordError(message))


def _count_part(
    conn: Connection, app: App, request: Context, *, ok: bool, outcome: Any, now: datetime
) -> tuple[dict[str, Any], str] | None:
    """Count this part; the part that completes the count sends the body
    (exactly one does: the counter is updated in one UPDATE ... RETURNING,
    and a part is counted once whatever the number of times it ran).
    Returns (body, error) when the body failed with a ChordError."""
    group_id, index = str(request.group), int(request.group_index or 0)
    stored = json.dumps({"ok": ok, "id": request.id, "value" if ok else "error": outcome})
    counted = db_results.chord_part_record(conn, group_id, index, stored, now)
    if counted is None:
        return None
    done, size = counted
    if size is None or done < size:
        return None
    outcomes = [json.loads(raw) for raw in db_results.chord_part_outcomes(conn, group_id)]
    body = dict(request.chord or {})
    failed = next((o for o in outcomes if not o["ok"]), None)
    error = None
    if failed is None:
        values = [o["value"] for o in outcomes]
        send.insert_rows(
            rows_for(app, body, [values], now=now, parent_id=request.id, root_id=request.root_id), conn, dedupe=True
        )
    else:
        error = f"Dependency {failed['id']} raised {failed['error']}"
        _chord_error(conn, app, body, error, now)
    db_results.delete_chord_parts(conn, group_id)
    return (body, error) if error is not None else None


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
