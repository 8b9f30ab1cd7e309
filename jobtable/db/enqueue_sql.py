"""SQL of enqueue: request rows inserted (those whose concurrency key is
taken skipped), the ``should_enqueue`` lock, and the checks a retried
enqueue or Kombu publish makes before writing again (``retry.py``).

Used by the Job API (``enqueue.py``), the shim's send, the transport's
publish, and every retry the worker or an operator enqueues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from . import tables
from .dialects import INSERT_BATCH, dialect_of

request = tables.request
result = tables.result


def insert_requests(conn: Connection, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert request rows, skipping those whose concurrency key is taken.

    Returns ``{task_id: id}`` of the rows inserted.  One statement per
    ``INSERT_BATCH`` rows (PostgreSQL: per 10,000 rows, by COPY where no row
    has a unique key, then two round trips).

    Every row's ``unique_key`` is made NULL or its ``concurrency_key`` here,
    the one door of every insert: a row without one (built by hand) keeps
    the default limit, and a key a caller removed (a fanout copy) or changed
    after ``messages.row_values`` cannot leave a stale unique key behind.
    """
    for values in rows:
        _align_unique_key(values)
    dialect = dialect_of(conn)
    inserted: dict[str, int] = {}
    # A dialect without a bound-parameter limit takes bigger batches.
    batch: int = getattr(dialect, "insert_batch", INSERT_BATCH)
    for start in range(0, len(rows), batch):
        for row in dialect.insert_requests(conn, rows[start : start + batch]):
            inserted[row.task_id] = row.id
    return inserted


#: The worker ids of Kombu consumers (a Celery worker's claims).
KOMBU_PREFIX = "kombu:"


def is_keyed_retry(row: dict[str, Any]) -> bool:
    """Whether a row about to be published is a later attempt (a retry) of a
    task with a concurrency key: see ``hand_over_held_attempts``."""
    return row.get("concurrency_key") is not None and int(row.get("attempt") or 1) > 1


def hand_over_held_attempts(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Delete the held earlier attempt of each keyed retry in ``rows``.

    A Celery worker's ``self.retry()`` (a Job's retry or ``DeferJob`` run
    by ``register_jobs``' tasks) publishes the next attempt while the
    current one's row is still held by the consumer (``acks_late``, or an
    early ack not written yet).  That row holds the concurrency key, so the
    retry would be skipped as a duplicate and the job silently lost.  Run
    in the insert's transaction, this hands the key over as the native
    worker does when it finishes an attempt: the held row goes, the retry
    comes, and no other job can take the key in between.  The consumer's
    later ack matches nothing (it deletes only rows it still holds).  Only
    rows held by Kombu consumers are touched: a native worker never
    publishes its own retries."""
    removed = 0
    for values in rows:
        if not is_keyed_retry(values):
            continue
        stmt = delete(request).where(
            request.c.task_id == values["task_id"],
            request.c.task_name == values["task_name"],
            request.c.concurrency_key == values["concurrency_key"],
            request.c.state == tables.RUNNING,
            request.c.attempt < int(values["attempt"]),
            request.c.worker_id.startswith(KOMBU_PREFIX, autoescape=True),
        )
        removed += conn.execute(stmt).rowcount
    return removed


def _align_unique_key(row: dict[str, Any]) -> None:
    key = row.get("concurrency_key")
    unique = row.get("unique_key", key)
    row["unique_key"] = key if key is not None and unique is not None else None


def written_task_ids(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """``{task_id: id}`` of the enqueues already in the table: a request row
    (its id), or -- already run -- a result row (the result's id).  The
    check before a retried enqueue (see ``db/retry.py``)."""
    if not task_ids:
        return {}
    found: dict[str, int] = {}
    stmt = select(request.c.task_id, request.c.id).where(request.c.task_id.in_(list(task_ids)))
    for row in conn.execute(stmt):
        found[row.task_id] = row.id
    missing = [task_id for task_id in task_ids if task_id not in found]
    if missing:
        stmt = select(result.c.task_id, result.c.id).where(result.c.task_id.in_(missing))
        for row in conn.execute(stmt):
            found.setdefault(row.task_id, row.id)
    return found


def written_messages(conn: Connection, keys: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    """The ``(task_id, queue, attempt)`` triples of ``keys`` already
    published: a waiting or held row, or a result of that attempt (a fanout
    publish writes one row per queue under one task id).  The check before a
    retried publish.  The attempt matters: Celery's retry re-publishes the
    task id of an attempt that is still held (``acks_late``) or already
    recorded, and must not be taken for it."""
    if not keys:
        return set()
    task_ids = sorted({task_id for task_id, _, _ in keys})
    found: set[tuple[str, str, int]] = set()
    for table in (request, result):
        stmt = select(table.c.task_id, table.c.queue, table.c.attempt).where(table.c.task_id.in_(task_ids))
        found |= {(row.task_id, row.queue, int(row.attempt)) for row in conn.execute(stmt)}
    return found & set(keys)


def lock_for_enqueue(conn: Connection, keys: Sequence[str]) -> None:
    dialect_of(conn).lock_for_enqueue(conn, keys)
