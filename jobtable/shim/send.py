"""From a task call and its options to a ``jobtable_request`` row.

Every row is the Celery protocol v2 message Celery would send: task name,
id, ``eta``, ``expires``, ``retries``, ``group``/``group_index``,
``root_id``/``parent_id`` headers, and the body ``[args, kwargs, embed]``
with canvas steps (``callbacks``, ``chain``, ``chord``) in Celery's format,
so a Celery worker that has the task registered runs it (and its chain)
too -- and the native worker follows chains sent by Celery clients.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .. import limits, message_checks, messages, params, telemetry
from ..db import clock as db_clock
from ..db import engine as db_engine
from ..db import results as db_results
from ..db import enqueue_sql, tables
from ..exceptions import EnqueueError, ParameterError
from . import signals
from .current import App
from .exceptions import NotSupported
from .registry import RegisteredTask, registry

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

#: apply_async options accepted and stored.
HANDLED = {
    "task_id",
    "countdown",
    "eta",
    "expires",
    "priority",
    "queue",
    "headers",
    "link",
    "link_error",
    "shadow",
    "time_limit",
    "soft_time_limit",
    "concurrency_key",
    "parent_id",
    "root_id",
    "group_id",
    "group_index",
}
#: apply_async options accepted without effect -> why (for the migration guide).
IGNORED = {
    "retry": "publishing is one INSERT: it succeeds or raises",
    "retry_policy": "publishing is one INSERT: it succeeds or raises",
    "ignore_result": "results are always recorded (one row per attempt)",
    "add_to_parent": "children are not tracked",
    "serializer": "checked: only 'json'",
    "mandatory": "the table always accepts the row",
    "delivery_mode": "rows are always durable",
    "exchange_type": "no exchanges",
}
#: apply_async options that raise NotSupported -> the alternative.
UNSUPPORTED = {
    "connection": "The queue is jobtable's database. To enqueue inside your own transaction, "
    "use a Job: Job(...).run_in_worker(connection=...).",
    "producer": "The queue is jobtable's database: there is no producer.",
    "publisher": "The queue is jobtable's database: there is no publisher.",
    "router": "Route with queue=, the task's queue option or app.conf.task_routes.",
    "exchange": "Route with queue=.",
    "routing_key": "Route with queue= (a routing key is the queue name in jobtable).",
    "compression": "Messages are stored uncompressed as JSON.",
    "chord": "Use chord(header)(body).",
    "replaced_task_nesting": "Task.replace() is not supported.",
    "stamped_headers": "Stamping is not supported.",
}


def utcnow() -> datetime:
    # The database's clock (db/clock.py): ETAs are compared with it.
    return db_clock.utcnow()


def _aware(value: datetime) -> datetime:
    # Celery with enable_utc (its default) reads naive datetimes as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"{name}={limits.short(value)}: pass a number of seconds (or a datetime for eta/expires).")
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf if value > 0 else -math.inf


def _after(now: datetime, name: str, value: Any, source: str) -> datetime:
    """``now`` plus ``value`` seconds.  Negative is allowed, as in Celery (a
    countdown in the past runs now; an expiry in the past has expired)."""
    seconds = _seconds(name, value)
    if math.isnan(seconds):
        raise EnqueueError(f"{source}: {name}=nan is not a number of seconds.")
    try:
        if math.isinf(seconds):
            raise OverflowError
        return now + timedelta(seconds=seconds)
    except OverflowError:
        raise EnqueueError(
            f"{source}: {name}={limits.short(value)} is out of range: the time it gives falls outside years "
            "1-9999. Pass a smaller number of seconds."
        ) from None


def check_options(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if key in UNSUPPORTED and value is not None:
            raise NotSupported(f"apply_async({key}=...)", UNSUPPORTED[key])
        if key == "serializer" and value not in (None, "json"):
            raise NotSupported(f"apply_async(serializer={value!r})", "Messages are stored as JSON: use 'json'.")
        if key not in HANDLED and key not in IGNORED and key not in UNSUPPORTED:
            raise NotSupported(
                f"apply_async({key}=...)",
                "Supported options: countdown, eta, expires, priority, queue, task_id, headers, link, link_error, shadow, "
                "time_limit, soft_time_limit.",
            )


def route(app: App, name: str, task: RegisteredTask | None, args: Any, kwargs: Any, options: dict[str, Any]) -> str:
    """The queue: queue= > the task's queue > task_routes > task_default_queue."""
    if options.get("queue"):
        return str(options["queue"])
    if task is not None and getattr(task, "queue", None):
        return str(task.queue)
    routes = app.conf.task_routes
    for router in routes if isinstance(routes, (list, tuple)) else [routes] if routes else []:
        found: Any = None
        if callable(router):
            found = router(name, args, kwargs, options, task=task)
        elif isinstance(router, dict):
            for pattern, target in router.items():
                if pattern == name or fnmatch.fnmatchcase(name, pattern):
                    found = target
                    break
        if isinstance(found, str):
            return found
        if isinstance(found, dict) and found.get("queue"):
            queue = found["queue"]
            return str(getattr(queue, "name", queue))
    return str(app.conf.task_default_queue)


def encode_args(args: Sequence[Any], kwargs: dict[str, Any], where: str) -> tuple[list[Any], dict[str, Any]]:
    """Arguments as stored: JSON with jobtable's markers (datetime, UUID, Decimal...)."""
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise TypeError(f"{where}: args must be a list or tuple, got {type(args).__name__}.")
    if not isinstance(kwargs, dict):
        raise TypeError(f"{where}: kwargs must be a dict, got {type(kwargs).__name__}.")
    try:
        return (
            [params.encode(value, f"{where} argument {i}") for i, value in enumerate(args)],
            {key: params.encode(value, f"{where} argument {key!r}") for key, value in kwargs.items()},
        )
    except params.ParameterError as exc:
        raise params.ParameterError(str(exc)) from None


def _signature_dicts(key: str, links: Any) -> list[dict[str, Any]]:
    """``link=``/``link_error=``: a signature or a list of them, as stored."""
    out = []
    for sig in links if isinstance(links, (list, tuple)) else [links]:
        if hasattr(sig, "to_dict"):
            out.append(sig.to_dict())
        elif isinstance(sig, dict) and isinstance(sig.get("task"), str):
            out.append(dict(sig))  # already in its JSON form (a canvas step)
        else:
            raise TypeError(f"{key}= takes signatures (task.s(...)), got {limits.short(sig)}.")
    return out


def build_row(
    app: App,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    *,
    now: datetime,
    embed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The request row of one task message.  ``args``/``kwargs`` are encoded."""
    check_options(options)
    source = f"task {limits.short(name)}"
    limits.check_name("the task name", name, source=source)
    task = registry.tasks.get(name)
    queue = route(app, name, task, args, kwargs, options)
    priority = options.get("priority")
    if priority is None and task is not None:
        priority = task.priority
    if priority is None:
        priority = app.conf.task_default_priority or 0
    # Higher runs first, as on RabbitMQ.
    priority = limits.check_int("priority", priority, tables.PRIORITY_MIN, tables.PRIORITY_MAX, source=source)
    eta: datetime | None = None
    if options.get("countdown") is not None:
        eta = _after(now, "countdown", options["countdown"], source)
    elif options.get("eta") is not None:
        if not isinstance(options["eta"], datetime):
            raise ParameterError(f"eta={limits.short(options['eta'])}: pass a datetime (or countdown= in seconds).")
        eta = limits.check_time("eta", _aware(options["eta"]), source=source)
    expires = options.get("expires")
    if expires is None and task is not None:
        expires = task.expires
    expires_at: datetime | None = None
    if isinstance(expires, datetime):
        expires_at = limits.check_time("expires", _aware(expires), source=source)
    elif expires is not None:
        expires_at = _after(now, "expires", expires, source)
    given_headers = options.get("headers") or {}
    if not isinstance(given_headers, dict):
        raise EnqueueError(f"{source}: headers= must be a dict, not {type(given_headers).__name__}.")
    headers = dict(given_headers)
    key = options.get("concurrency_key") or headers.pop(messages.CONCURRENCY_KEY_HEADER, None)
    if key is None and task is not None and task.concurrency_key is not None:
        key = (
            task.concurrency_key(*params.decode(args), **params.decode(kwargs))
            if callable(task.concurrency_key)
            else task.concurrency_key
        )
    task_id = str(options.get("task_id") or messages.new_task_id())
    envelope = messages.task_message(
        task_name=name,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        eta=eta if eta is not None and eta > now else None,
        expires=expires_at,
        concurrency_key=str(key) if key else None,
        extra_headers=headers,
    )
    h = envelope["headers"]
    time_limit = options.get("time_limit", getattr(task, "time_limit", None) or app.conf.task_time_limit)
    soft = options.get("soft_time_limit", getattr(task, "soft_time_limit", None) or app.conf.task_soft_time_limit)
    h["timelimit"] = [time_limit, soft]
    h["root_id"] = options.get("root_id") or task_id
    h["parent_id"] = options.get("parent_id")
    h["group"] = options.get("group_id")
    h["group_index"] = options.get("group_index")
    h["shadow"] = options.get("shadow")
    full = {"callbacks": None, "errbacks": None, "chain": None, "chord": None, **(embed or {})}
    for key, field in (("link", "callbacks"), ("link_error", "errbacks")):
        if options.get(key):
            full[field] = _signature_dicts(key, options[key])
    if signals.before_task_publish.receivers:
        # As Celery's amqp.send_task_message: the receivers may change the
        # headers and the body in place (Sentry adds its trace headers).
        signals.before_task_publish.send(
            sender=name,
            body=(args, kwargs, full),
            exchange="",
            routing_key=queue,
            headers=h,
            properties=envelope["properties"],
            declare=[],
            retry_policy=None,
        )
    envelope["body"] = message_checks.dump_body([args, kwargs, full], source)
    return message_checks.checked_row(envelope, queue, now, source=source)


def _published(rows: list[dict[str, Any]], inserted: dict[str, int]) -> None:
    """``after_task_publish`` for each row inserted (once committed, when the
    transaction is ours)."""
    if not signals.after_task_publish.receivers:
        return
    for row in rows:
        if row["task_id"] not in inserted:
            continue
        envelope = json.loads(row["message"])
        body = envelope.get("body")
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode("utf-8")
        signals.after_task_publish.send(
            sender=row["task_name"],
            body=tuple(json.loads(body)) if isinstance(body, str) else body,
            exchange="",
            routing_key=row["queue"],
            headers=envelope.get("headers") or {},
            properties=envelope.get("properties") or {},
        )


def insert_rows(
    rows: list[dict[str, Any]], conn: Connection | None = None, *, dedupe: bool = False
) -> dict[str, int]:
    """Insert the rows (in ``conn``'s transaction, else in a new one); returns
    the task ids inserted (with their row ids).  A row whose concurrency key is taken is skipped;
    with ``dedupe``, so is a row whose task id is already known (a canvas
    step sent again by a step that ran twice)."""
    if not rows:
        return {}
    if conn is None:
        with db_engine.connect() as own, own.begin():
            inserted = _insert(rows, own, dedupe)
        _published(rows, inserted)
        return inserted
    inserted = _insert(rows, conn, dedupe)
    _published(rows, inserted)
    return inserted


def _insert(rows: list[dict[str, Any]], conn: Connection, dedupe: bool) -> dict[str, int]:
    if dedupe:
        # A step of a replaced task's chain (replace(): same id, a later
        # attempt) is known by its attempt; any other by its task id.
        later = [row for row in rows if int(row.get("attempt") or 1) > 1]
        first = [row for row in rows if int(row.get("attempt") or 1) <= 1]
        known = db_results.task_ids_known(conn, [row["task_id"] for row in first])
        known_attempts = db_results.attempts_known(conn, [(row["task_id"], int(row["attempt"])) for row in later])
        rows = [row for row in first if row["task_id"] not in known] + [
            row for row in later if (row["task_id"], int(row["attempt"])) not in known_attempts
        ]
        if not rows:
            return {}
    with telemetry.send_span(rows[0]["queue"], rows[0]["task_name"], [row["task_id"] for row in rows]) as trace:
        if trace:
            for row in rows:
                envelope = json.loads(row["message"])
                envelope["headers"].update(trace)
                row["message"] = messages.dumps(envelope)
        return enqueue_sql.insert_requests(conn, rows)
