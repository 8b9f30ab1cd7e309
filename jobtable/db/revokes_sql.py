"""SQL of revokes that last (``jobtable_revoke``): recorded by the
transport's pidbox publish (Celery's ``app.control.revoke`` and
``revoke_by_stamped_headers``), the shim's ``AsyncResult.revoke`` and the
dashboard; checked at every claim, by the native worker
(``claims_sql.claim``) and the Kombu transport before delivery.

Celery keeps revoked ids in each worker's memory, so a worker that was not
running at the time (or missed the broadcast) runs the task anyway; a row
here is seen by every worker, now or started tomorrow.  A revoke expires as
Celery's do: ``CELERY_WORKER_REVOKE_EXPIRES`` seconds (10800) after it was
last made.  Celery never expires stamped-header revokes; a table cannot
grow forever, so they expire the same way here.

A claimed row is revoked when its task id, or one value of one of its
stamped headers (``headers['stamps']``), has an unexpired row: one indexed
``value IN (...)`` statement per claimed batch, which on an empty table (or
one of 10,000 revokes) is a few index probes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Connection, Row

from . import result_rows, tables
from .dialects import dialect_of

revoke = tables.revoke
request = tables.request

TASK, STAMP, TERMINATE = tables.REVOKE_TASK, tables.REVOKE_STAMP, tables.REVOKE_TERMINATE


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


#: How long a revoke holds, as Celery's worker/state.py reads it.
REVOKE_EXPIRES = _env_float("CELERY_WORKER_REVOKE_EXPIRES", 10800)
#: Values per ``IN`` list (SQLite's bound-parameter limit, with room to spare).
_CHUNK = 500
#: What the result row of a revoked message says (Celery's TaskRevokedError).
REVOKED_ERROR = "celery.exceptions.TaskRevokedError"


#: Runners that record a revoked task themselves, as a Celery worker does
#: (the native worker's Celery runner and the shim's: the ``task_revoked``
#: signal, a chord part counted as revoked), by owner: each, given a revoked
#: claimed row, True to have it delivered with its task id in
#: :data:`flagged` instead of ended here.  Keyed so that each runner
#: installs once and one never replaces another's (both may run in one
#: worker: a Celery app's tasks and shim tasks).
runner_revokes: dict[str, Callable[[Row[Any]], bool]] = {}


def runner_records_revoke(row: Row[Any]) -> bool:
    """Whether a runner of this process records the revoke of ``row``."""
    return any(wants(row) for wants in runner_revokes.values())
#: Task ids of this process's claims delivered flagged as revoked.
flagged: set[str] = set()


def storable(value: Any) -> str | None:
    """``value`` as the table stores it, or None when no message can carry
    it (not text, over 255 characters, NUL or a lone surrogate: the queue
    refuses such ids at publish, so such a revoke could never match)."""
    text: str
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        return None
    if not text or len(text) > 255 or "\x00" in text:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def add(
    conn: Connection,
    entries: Iterable[tuple[str, str, Any]],
    now: datetime,
    expires: float | None = None,
) -> int:
    """Record revokes ``(kind, name, value)`` (``name`` is '' for a task
    id); a revoke made again starts its expiry anew, as in Celery's
    LimitedSet.  Values no message can hold are skipped.  Returns how many
    were recorded."""
    until = now + timedelta(seconds=REVOKE_EXPIRES if expires is None else expires)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind, name, value in entries:
        stored, stored_name = storable(value), storable(name) if name else ""
        if stored is None or stored_name is None or kind not in (TASK, STAMP, TERMINATE):
            continue
        rows[(stored, kind, stored_name)] = {
            "value": stored,
            "kind": kind,
            "name": stored_name,
            "expires_at": until,
            "created_at": now,
        }
    if not rows:
        return 0
    # Expired rows go as new ones come: the table holds ~ what was revoked
    # in the last REVOKE_EXPIRES seconds.
    prune(conn, now)
    insert = dialect_of(conn).upsert_insert(revoke)
    stmt = insert.on_conflict_do_update(
        index_elements=["value", "kind", "name"],
        set_={"expires_at": insert.excluded.expires_at, "created_at": insert.excluded.created_at},
    )
    values = list(rows.values())
    for start in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[start : start + _CHUNK])
    return len(values)


def remove(conn: Connection, kind: str, value: str, name: str = "") -> int:
    """Un-revoke: the task (or stamp) may run again."""
    stmt = delete(revoke).where(revoke.c.value == value, revoke.c.kind == kind, revoke.c.name == name)
    return conn.execute(stmt).rowcount


def prune(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Delete expired revokes (the check ignores them already)."""
    # Two statements, not a LIMIT inside the DELETE's IN subquery: MariaDB
    # and MySQL refuse that ("LIMIT & IN/ALL/ANY/SOME subquery").
    expired = list(conn.execute(select(revoke.c.value).where(revoke.c.expires_at <= now).limit(limit)).scalars())
    if not expired:
        return 0
    stmt = delete(revoke).where(revoke.c.expires_at <= now, revoke.c.value.in_(expired))
    return conn.execute(stmt).rowcount


def listed(conn: Connection, now: datetime, kind: str | None = None, limit: int = 50_000) -> list[Row[Any]]:
    """Unexpired revokes, newest first (``celery inspect revoked``, dashboard)."""
    stmt = select(revoke).where(revoke.c.expires_at > now)
    if kind is not None:
        stmt = stmt.where(revoke.c.kind == kind)
    return list(conn.execute(stmt.order_by(revoke.c.created_at.desc()).limit(limit)))


def keys_of(row: Row[Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """A claimed row's task id and the ``(header, value)`` pairs it is
    stamped with (each value of a list separately, as Celery's
    Request.revoked compares).  The message is parsed only when it carries
    stamps, or when the claim returned no task_id column (the transport's
    PostgreSQL claim)."""
    task_id = getattr(row, "task_id", None)
    message = row.message
    if task_id is not None and '"stamped_headers"' not in message:
        return task_id, []  # the usual case: no JSON parsing
    try:
        headers = json.loads(message).get("headers") or {}
    except (ValueError, AttributeError):
        return task_id, []
    if not isinstance(headers, dict):
        return task_id, []
    if task_id is None and isinstance(headers.get("id"), str):
        task_id = headers["id"]
    names, stamps = headers.get("stamped_headers") or [], headers.get("stamps") or {}
    if not isinstance(names, list) or not isinstance(stamps, dict):
        return task_id, []
    pairs = []
    for name in names:
        found = stamps.get(name) if isinstance(name, str) else None
        for value in found if isinstance(found, (list, tuple)) else [found]:
            stored = storable(value)
            if stored is not None:
                pairs.append((name, stored))
    return task_id, pairs


# Expiry is compared in Python: a condition on expires_at in the SQL can
# lead PostgreSQL's planner (on stale statistics) to combine the expiry
# index with the key's, reading every unexpired row.
_QUERY = select(revoke.c.value, revoke.c.kind, revoke.c.name, revoke.c.expires_at).where(
    revoke.c.value.in_(bindparam("values", expanding=True))
)

_PG_QUERY = (
    "SELECT value, kind, name, expires_at FROM jobtable_revoke WHERE value = ANY(%(values)s::varchar[])"
)


def revoked(conn: Connection, rows: Sequence[Row[Any]], now: datetime) -> dict[int, str]:
    """Which of the claimed ``rows`` are revoked: row id -> why ("task id" or
    "stamp name=value").  No statement at all for an empty batch."""
    return {
        row_id: "task id" if kind == TASK else f"stamp {name}={value}"
        for row_id, (kind, name, value) in revoked_entries(conn, rows, now).items()
    }


def revoked_entries(conn: Connection, rows: Sequence[Row[Any]], now: datetime) -> dict[int, tuple[str, str, str]]:
    """As :func:`revoked`, with the revoke that matched each row: row id ->
    ``(kind, name, value)`` (what a Celery worker's memory would hold)."""
    if not rows:
        return {}
    wanted: dict[str, list[tuple[int, str, str]]] = {}
    for row in rows:
        task_id, stamps = keys_of(row)
        if task_id is not None:
            wanted.setdefault(task_id, []).append((row.id, TASK, ""))
        for name, value in stamps:
            wanted.setdefault(value, []).append((row.id, STAMP, name))
    values = list(wanted)
    found: dict[int, tuple[str, str, str]] = {}
    if not values:  # messages without a task id (Kombu's own: pidbox, replies)
        return found
    postgresql = conn.dialect.name == "postgresql"
    step = len(values) if postgresql else _CHUNK
    for start in range(0, len(values), step):
        params = {"values": values[start : start + step]}
        # PostgreSQL: one array parameter, driver SQL (nothing to compile
        # per batch size); SQLite: an expanding IN.
        hits = conn.exec_driver_sql(_PG_QUERY, params) if postgresql else conn.execute(_QUERY, params)
        for hit in hits:
            if _aware(hit.expires_at) <= now:
                continue
            for row_id, kind, name in wanted[hit.value]:
                if kind == hit.kind and name == hit.name and row_id not in found:
                    found[row_id] = (kind, name, hit.value)
    return found


def _aware(value: datetime) -> datetime:
    # SQLite's driver SQL returns naive UTC; PostgreSQL aware datetimes.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def end_revoked(conn: Connection, rows: Sequence[Row[Any]], worker_id: str, now: datetime) -> list[int]:
    """Delete the claimed ``rows`` (still running under ``worker_id``) and
    record each REVOKED (a CANCELLED result, never started), as Celery's
    worker does with a revoked task it receives.  Returns the ids ended."""
    if not rows:
        return []
    # The results first, then the rows: each statement may be its own
    # transaction (the worker's autocommit claim).  Dying in between leaves
    # the row claimed, to be rescued, claimed and revoked again; the result
    # row repeated is skipped (same task id and attempt).
    record_revoked(conn, rows, now)
    return sorted(dialect_of(conn).take_running(conn, worker_id, [row.id for row in rows]))


def record_revoked(conn: Connection, rows: Sequence[Any], now: datetime, reason: str = "revoked") -> None:
    """Each request row's REVOKED result (a CANCELLED result, never started;
    ``reason`` its message, Celery's: "revoked", "expired"); a repeated
    (task id, attempt) is skipped."""
    result_rows.insert_results(
        conn,
        [
            result_rows.result_values(
                row,
                tables.CANCELLED,
                ended_at=now,
                started_at=None,
                error_type=REVOKED_ERROR,
                error_message=reason,
                retried=False,
            )
            for row in rows
        ],
    )


def end_revoked_held(conn: Connection, ids: Sequence[int], consumer_id: str, now: datetime) -> int:
    """The transport's :func:`end_revoked`, by row id (its claim returns
    only the columns it delivers): in one transaction, the rows still held
    by ``consumer_id`` leave the queue with their REVOKED result."""
    if not ids:
        return 0
    stmt = (
        delete(request)
        .where(request.c.id.in_(list(ids)), request.c.worker_id == consumer_id, request.c.state == tables.RUNNING)
        .returning(*request.c)
    )
    removed = list(conn.execute(stmt))
    result_rows.insert_results(
        conn,
        [
            result_rows.result_values(
                row,
                tables.CANCELLED,
                ended_at=now,
                started_at=None,
                error_type=REVOKED_ERROR,
                error_message="revoked",
                retried=False,
            )
            for row in removed
        ],
    )
    return len(removed)


def is_revoked(conn: Connection, task_id: str, now: datetime) -> bool:
    """Whether ``task_id`` has an unexpired revoke (the dashboard's pages)."""
    stmt = select(revoke.c.expires_at).where(
        revoke.c.value == task_id, revoke.c.kind == TASK, revoke.c.name == ""
    )
    expires_at = conn.execute(stmt).scalar()
    return expires_at is not None and _aware(expires_at) > now
