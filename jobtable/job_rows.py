"""Job instances -> request-row dicts: options checked, arguments encoded,
the Celery envelope dumped -- with per-class templates so a batch's (and a
single enqueue's) per-job Python work is what differs between its jobs.

Below ``enqueue.py`` (which locks, routes and inserts what this builds):
nothing here touches the database.  ``build_row`` is the one checked way a
row is made; ``build_rows`` and ``single_row`` only reuse what it produced
for an earlier job of the same group, and fall back to it whenever a job's
text could differ in a way it checks (size, UTF-8).
"""

from __future__ import annotations

import functools
import inspect
import os
from datetime import datetime, timedelta
from typing import Any, Union

from . import limits, message_checks, messages, params
from .db import tables
from .jobbase import BaseJob, overrides

Delay = Union[int, float, timedelta, datetime, None]


#: The uuid4 variant digit (RFC 4122: binary 10xx) for a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def task_ids_for(n: int) -> list[str]:
    """``n`` new task ids, each the text of a random (version 4) UUID, as
    ``messages.new_task_id`` gives: one read of the system's random source
    for the batch instead of one ``uuid.uuid4()`` object per job."""
    digits = os.urandom(16 * n).hex()
    return [
        f"{digits[i:i + 8]}-{digits[i + 8:i + 12]}-4{digits[i + 13:i + 16]}-"
        f"{_VARIANT[digits[i + 16]]}{digits[i + 17:i + 20]}-{digits[i + 20:i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


#: ``single_row``'s templates, per (class, queue, priority, retries), for
#: the settings object they were built under (``max_message_size``).
_SINGLE: dict[tuple[Any, ...], tuple[dict[str, Any], list[str], list[str] | None]] = {}
_single_settings: list[Any] = [None]
#: Templates kept at most (classes made at run time must not grow it forever).
_SINGLE_MAX = 1024


def single_row(
    job: BaseJob, task_id: str, now: datetime, queue: str, priority: int, retries: int, settings: Any
) -> dict[str, Any]:
    """``build_row(job, task_id, {}, now, now, queue, priority, retries, None)``,
    built from a per-class template: the first job of each (class, queue,
    priority, retries) goes through ``build_row`` (every check); later ones only
    fill in their task id and arguments (as a batch's jobs do, ``build_rows``)."""
    if _single_settings[0] is not settings:
        _SINGLE.clear()
        _single_settings[0] = settings
    key = (type(job), queue, priority, retries)
    group = _SINGLE.get(key)
    if group is not None:
        template, parts, bare = group
        text = _filled(job, task_id, parts, bare, settings.max_message_size)
        if text is not None:
            row = dict(template)
            row["task_id"] = task_id
            row["message"] = text
            row["run_at"] = row["created_at"] = now
            return row
    row = build_row(job, task_id, {}, now, now, queue, priority, retries, None)
    if group is None:
        if len(_SINGLE) >= _SINGLE_MAX:
            _SINGLE.clear()
        parts = _template(job, {}, now, now, row, 1)
        _SINGLE[key] = (dict(row), parts, _without_arguments(parts))
    return row


# -- validation and encoding ---------------------------------------------------


def run_at_of(delay: Delay, now: datetime, source: str) -> datetime:
    if delay is None:
        return now
    if isinstance(delay, datetime):
        return max(limits.check_time("delay", delay, source=source), now)
    return limits.time_after(now, "delay", delay, source=source)


def build_row(
    job: BaseJob,
    task_id: str,
    trace_headers: dict[str, str],
    now: datetime,
    run_at: datetime,
    queue: str | None,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
    attempt: int = 1,
) -> dict[str, Any]:
    task_name = job.job_name()
    source = type(job).__qualname__
    queue = limits.check_name("queue", queue if queue is not None else job.resolved_queue(), source=source)
    priority = limits.check_int(
        "priority",
        priority if priority is not None else job.resolved_priority(),
        tables.PRIORITY_MIN,
        tables.PRIORITY_MAX,
        source=source,
    )
    retries = limits.check_int(
        "retries", retries if retries is not None else job.resolved_retries(), 0, limits.INT32_MAX, source=source
    )
    key = limits.check_name(
        "concurrency_key",
        concurrency_key if concurrency_key is not None else job.resolved_concurrency_key(),
        source=source,
        allow_empty=True,
    )
    args, kwargs = encode_arguments(job)
    envelope = messages.task_message(
        task_name=task_name,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        eta=run_at if run_at > now else None,
        attempt=attempt,
        retries=retries,
        concurrency_key=key or None,
        custom_limit=overrides(job, "should_enqueue"),
        extra_headers=trace_headers,
    )
    return message_checks.checked_row(envelope, queue, now, source=source, arg_names=positional_names(type(job)))


#: Stands for a job's own values in a batch's message template (see build_rows):
#: random per process, so no other part of a message can contain it.
_MARK = f"jobtable-{messages.new_task_id()}-"
_ID, _ARGSREPR, _KWARGSREPR, _BODY = (f"{_MARK}{i}" for i in range(4))


def build_rows(
    jobs: list[BaseJob],
    task_ids: list[str],
    trace_headers: dict[str, str],
    now: datetime,
    run_at: datetime,
    queue: str | None,
    priority: int | None,
    retries: int | None,
    concurrency_key: str | None,
    attempt: int,
) -> list[dict[str, Any]]:
    """``build_row`` of every job, the batch's per-job Python work cut to what
    differs between its jobs.

    Jobs of one class with the same queue, priority, retries and key get
    messages that differ only in the task id, the body and the argument
    reprs: the first job of each such group goes through ``build_row`` (every
    check), and the group's message is dumped once as a template whose
    placeholders the others fill in.  The text is the same as
    ``json.dumps`` of each job's envelope would be (the placeholders are
    whole JSON strings, replaced by JSON strings).  A job whose text is not
    UTF-8 or over ``max_message_size`` goes through ``build_row``, which refuses
    it with the error naming the part.
    """
    from .settings import get_settings

    limit = get_settings().max_message_size
    groups: dict[Any, tuple[dict[str, Any], list[str], list[str] | None]] = {}
    # The group key of a class whose queue, priority, retries and key do not
    # depend on the instance (given by the call, or BaseJob's defaults):
    # asked once per class, not four hooks per job.
    static: dict[type, Any] = {}  # None: the class's key depends on the instance
    rows: list[dict[str, Any]] = []
    for job, task_id in zip(jobs, task_ids):
        cls = type(job)
        key = static.get(cls)
        try:
            if key is None:
                key = (
                    cls,
                    queue if queue is not None else job.resolved_queue(),
                    priority if priority is not None else job.resolved_priority(),
                    retries if retries is not None else job.resolved_retries(),
                    concurrency_key if concurrency_key is not None else job.resolved_concurrency_key(),
                )
                if cls not in static:
                    static[cls] = key if _instance_free(job, queue, priority, retries, concurrency_key) else None
            group = groups.get(key)
        except TypeError:  # an unhashable value: build_row names what is wrong
            key, group = None, None
        if group is None:
            row = build_row(job, task_id, trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt)
            rows.append(row)
            if key is not None:
                parts = _template(job, trace_headers, now, run_at, row, attempt)
                groups[key] = (dict(row), parts, _without_arguments(parts))
            continue
        template, parts, bare = group
        text = _filled(job, task_id, parts, bare, limit)
        if text is None:
            rows.append(build_row(job, task_id, trace_headers, now, run_at, queue, priority, retries, concurrency_key, attempt))
            continue
        row = dict(template)
        row["task_id"] = task_id
        row["message"] = text
        rows.append(row)
    return rows


def _filled(job: BaseJob, task_id: str, parts: list[str], bare: list[str] | None, limit: int) -> str | None:
    """The message of ``job`` from its group's template (see ``build_rows``), or
    None when it is not UTF-8 or over ``limit`` bytes: ``build_row`` then refuses
    it with the error naming the part."""
    if bare is not None and not job._init_args and not job._init_kwargs:
        # No arguments: only the task id differs (ASCII), and the text is
        # no longer than the group's first job's, which build_row checked.
        return f'"{task_id}"'.join(bare)
    args, kwargs = encode_arguments(job)
    if args or kwargs:
        fill = {
            _ARGSREPR: messages.dumps(messages.argsrepr(args)),
            _KWARGSREPR: messages.dumps(messages.argsrepr(kwargs)),
            _BODY: messages.dumps(messages.dumps([args, kwargs, _EMBED])),
        }
    else:
        fill = dict(_NO_ARGUMENTS)
    # Our own uuid4 text: nothing in it for JSON to escape.
    fill[_ID] = f'"{task_id}"'
    text = "".join([fill.get(part, part) for part in parts])
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return None
    return None if size > limit else text


#: The hooks behind each part of a batch group's key (see build_rows).
_KEY_HOOKS = (
    ("resolved_queue", "get_queue", "default_queue"),
    ("resolved_priority", "get_priority", "default_priority"),
    ("resolved_retries", "get_retries", "default_retries"),
    ("resolved_concurrency_key", "get_unique_key", "default_concurrency_key"),
)


def _instance_free(job: BaseJob, *given: Any) -> bool:
    """Whether every part of ``job``'s group key is the same for all
    instances of its class: given by the call, or none of its hooks
    overridden (BaseJob's return constants)."""
    return all(
        value is not None or not any(overrides(job, hook) for hook in hooks) for value, hooks in zip(given, _KEY_HOOKS)
    )


def _without_arguments(parts: list[str]) -> list[str] | None:
    """The message of a group's job without arguments, split around its
    task id (``f'"{task_id}"'.join(...)`` gives it whole), or None when
    the template is not the expected one."""
    if parts.count(_ARGSREPR) != 1 or parts.count(_KWARGSREPR) != 1 or parts.count(_BODY) != 1:
        return None
    text = "".join([_NO_ARGUMENTS.get(part, part) for part in parts])
    return text.split(_ID_FILLER)


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Stands for _ID in a joined text, to split it on (see _MARK).
_ID_FILLER = f"{_MARK}id"
_NO_ARGUMENTS = {
    _ID: _ID_FILLER,
    _ARGSREPR: messages.dumps(messages.argsrepr([])),
    _KWARGSREPR: messages.dumps(messages.argsrepr({})),
    _BODY: messages.dumps(messages.dumps([[], {}, _EMBED])),
}


def _template(
    job: BaseJob, trace_headers: dict[str, str], now: datetime, run_at: datetime, row: dict[str, Any], attempt: int
) -> list[str]:
    """The message of ``row``'s group, split around its placeholders: the
    parts, each placeholder one part of its own."""
    envelope = messages.task_message(
        task_name=row["task_name"],
        task_id=_ID,
        args=[],
        kwargs={},
        queue=row["queue"],
        priority=row["priority"],
        eta=run_at if run_at > now else None,
        attempt=attempt,
        retries=row["retries"],
        concurrency_key=row["concurrency_key"],
        custom_limit=overrides(job, "should_enqueue"),
        extra_headers=trace_headers,
    )
    envelope["headers"]["argsrepr"] = _ARGSREPR
    envelope["headers"]["kwargsrepr"] = _KWARGSREPR
    envelope["body"] = _BODY
    text = messages.dumps(envelope)
    parts: list[str] = []
    for piece in text.split(f'"{_MARK}'):
        if parts:
            # piece starts with the placeholder's number and its closing quote.
            number, rest = piece.split('"', 1)
            parts.append(_MARK + number)
            parts.append(rest)
        else:
            parts.append(piece)
    return parts


def encode_arguments(job: BaseJob) -> tuple[list[Any], dict[str, Any]]:
    """The job's ``__init__`` arguments as JSON-safe values, with errors that
    name the argument."""
    cls = type(job)
    names = positional_names(cls)
    try:
        args = [
            params.encode(value, f"{cls.__qualname__} argument {names[i] if i < len(names) else i!r}")
            for i, value in enumerate(job._init_args)
        ]
        kwargs = {
            key: params.encode(value, f"{cls.__qualname__} argument {key!r}")
            for key, value in job._init_kwargs.items()
        }
    except params.ParameterError as exc:
        raise params.ParameterError(str(exc)) from None
    return args, kwargs


@functools.cache
def positional_names(cls: type) -> list[str]:
    # Cached: inspect.signature parses text for C-level __init__s, which would
    # otherwise cost more per enqueue than the INSERT.
    try:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return []
    return [
        repr(p.name)
        for p in list(signature.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
