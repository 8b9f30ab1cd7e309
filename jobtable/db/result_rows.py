"""A finished attempt's ``jobtable_result`` row: its values, taken from the
request row, and the batched insert that every writer of results uses (the
worker's ``finish``, rescue, cancel, dead letters)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Row

from . import tables

result = tables.result


def result_values(
    row: Row[Any], status: str, *, ended_at: datetime, **fields: Any
) -> dict[str, Any]:
    """A ``jobtable_result`` row for one attempt of the request ``row``."""
    values = {
        "task_id": row.task_id,
        "task_name": row.task_name,
        "queue": row.queue,
        "priority": row.priority,
        "attempt": row.attempt,
        "retries": row.retries,
        "concurrency_key": row.concurrency_key,
        "status": status,
        "requested_at": row.created_at,
        "started_at": row.started_at,
        "ended_at": ended_at,
        "worker_id": row.worker_id,
        "message": row.message,
    }
    values.update(fields)
    return values


_RESULT_INSERT: dict[str, Any] = {}


def insert_results(conn: Connection, values: Sequence[dict[str, Any]]) -> None:
    """Insert result rows; one that repeats a (task_id, attempt) is skipped
    rather than failing the batch (Celery clients may reuse task ids)."""
    if not values:
        return
    name = conn.dialect.name
    if name == "postgresql":
        from .dialects import insert_results_pg

        insert_results_pg(conn, values)
        return
    if name == "mysql" and conn.dialect.driver == "mysqldb":  # its string_literal: the driver's own escaping
        from .dialects.mysql import insert_results_mysql

        insert_results_mysql(conn, values)
        return
    stmt = _RESULT_INSERT.get(name)
    if stmt is None:
        from .dialects import for_name

        stmt = _RESULT_INSERT[name] = for_name(name).upsert_insert(result).on_conflict_do_nothing()
    # executemany needs the same keys in every row: a success has no error
    # fields, a failure no return value.
    keys = set().union(*values)
    conn.execute(stmt, [{key: row.get(key) for key in keys} for row in values])
