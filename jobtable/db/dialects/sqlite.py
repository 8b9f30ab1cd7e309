"""SQLite: what jobtable does differently there (see base.Dialect).

One writer at a time: jobtable's transactions begin IMMEDIATE (engine.py),
taking the database's write lock up front, and that lock is what makes the
claim, the enqueue lock and the stats triggers safe.  Listeners notice
commits by themselves (notify.py polls the data version): nothing to notify.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Table, bindparam, delete, func, literal, select, text, update
from sqlalchemy.dialects import sqlite as sa_sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from .. import tables
from .base import STATS_FINE_KEEP, STATS_TABLE, Dialect, dividing_spans, register, schedule_claim_by_upsert
from .stats_sql import OPS, SOURCE_COLUMNS, on_conflict, wait_class

t = tables.request

_SQLITE_INSERT = sa_sqlite.insert(t).on_conflict_do_nothing().returning(t.c.id, t.c.task_id)


class SqliteDialect(Dialect):
    name = "sqlite"

    def insert_requests(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
        # One statement compiled once: a multi-row VALUES clause would be
        # compiled again on every call.  Many rows go through SQLAlchemy's
        # insertmanyvalues batching, RETURNING included.
        if len(rows) == 1:
            return list(conn.execute(_SQLITE_INSERT, rows[0]))
        return list(conn.execute(_SQLITE_INSERT, list(rows)))

    def lock_for_enqueue(self, conn: Connection, keys: Sequence[str]) -> None:
        # Transactions begin IMMEDIATE (engine.py), which already holds the
        # database's write lock.  A caller's own connection may have begun
        # DEFERRED: a write statement (touching no row) takes the lock now.
        conn.execute(text("DELETE FROM jobtable_request WHERE 0"))

    def claim(
        self, conn: Connection, queues: Sequence[str], limit: int, values: dict[str, Any]
    ) -> list[Row[Any]]:
        # The transaction holds the write lock (BEGIN IMMEDIATE): no other
        # claimer can run between the SELECT and the UPDATE.
        picked = (
            select(t.c.id)
            .where(t.c.state == tables.PENDING, t.c.queue.in_(bindparam("queues", expanding=True)))
            .order_by(t.c.priority.desc(), t.c.id)
            .limit(limit)
            .scalar_subquery()
        )
        stmt = (
            update(t)
            .where(t.c.id.in_(picked))
            .values(state=tables.RUNNING, **values)
            .returning(*t.c)
        )
        rows = list(conn.execute(stmt, {"queues": list(queues)}))
        rows.sort(key=lambda row: (-row.priority, row.id))
        return rows

    def take_running(self, conn: Connection, worker_id: str, ids: Sequence[int]) -> set[int]:
        taken: set[int] = set()
        for start in range(0, len(ids), 900):  # bound parameters per statement
            chunk = list(ids[start : start + 900])
            marks = ",".join("?" * len(chunk))
            rows = conn.exec_driver_sql(
                f"DELETE FROM jobtable_request WHERE id IN ({marks}) AND worker_id = ? AND state = 'running' "
                "RETURNING id",
                (*chunk, worker_id),
            )
            taken.update(row[0] for row in rows)
        return taken

    def wake_queues(self, conn: Connection, queues: Sequence[str]) -> None:
        # SQLite listeners notice the commit by themselves.
        pass

    # -- statements that return or limit rows --

    def update_returning(
        self,
        conn: Connection,
        table: Table,
        where: Sequence[ColumnElement[bool]],
        values: dict[str, Any],
        columns: Sequence[Column[Any]],
    ) -> list[Row[Any]]:
        return list(conn.execute(update(table).where(*where).values(values).returning(*columns)))

    def delete_returning(
        self, conn: Connection, table: Table, where: Sequence[ColumnElement[bool]], columns: Sequence[Column[Any]]
    ) -> list[Row[Any]]:
        return list(conn.execute(delete(table).where(*where).returning(*columns)))

    def skip_locked(self, stmt: Select[Any]) -> Select[Any]:
        # The write lock, taken at BEGIN IMMEDIATE, already keeps other
        # writers out; SQLite has no row locks.
        return stmt

    def in_limited(self, conn: Connection, column: Column[Any], ids: Select[Any]) -> ColumnElement[bool]:
        return column.in_(ids.scalar_subquery())

    def insert_new(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        key = next(iter(table.primary_key.columns))
        stmt = sa_sqlite.insert(table).values(values).on_conflict_do_nothing().returning(key)
        return conn.execute(stmt).first() is not None

    def insert_binding(self, conn: Connection, values: dict[str, Any]) -> bool:
        return bool(conn.execute(sa_sqlite.insert(tables.binding).values(values).on_conflict_do_nothing()).rowcount)

    def notify_bindings_changed(self, conn: Connection) -> None:
        # No notifications: consumers' caches last binding_cache_seconds.
        pass

    def schedule_claim(self, conn: Connection, name: str, slot: datetime, now: datetime) -> bool:
        return schedule_claim_by_upsert(self, conn, name, slot, now)

    def upsert_insert(self, table: Any) -> Any:
        return sa_sqlite.insert(table)

    # -- result stats --

    def stats_spans(self) -> tuple[int, ...]:
        # The finest only, since the row triggers pay for each upsert on every
        # result row; retention folds fine rows older than STATS_FINE_KEEP
        # into hourly ones (compact_result_stats).
        return (min(tables.STATS_SPANS),)

    def stats_read_spans(self, step: int) -> tuple[int, ...]:
        # Every span that divides the step: an hour's count is its hourly row
        # (folded fine rows) plus the fine rows written since, for instance by
        # a later update or deletion of one of its results.
        return tuple(dividing_spans(step))

    def result_stats_ddl(self) -> list[str]:
        # Row-level triggers: SQLite has no statement-level ones.  Writes are
        # serialised by the database lock (BEGIN IMMEDIATE), so one shard.
        # Each writes the row's fine bucket only (stats_spans); the delete
        # trigger only subtracts: folding and pruning are a few statements per
        # retention batch (compact_result_stats), not queries per deleted row.
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in SOURCE_COLUMNS.split(", "))
        return [
            f"CREATE TRIGGER jobtable_result_stats_insert AFTER INSERT ON jobtable_result BEGIN\n"
            f"{_stats_upsert(1, 'NEW')};\nEND",
            f"CREATE TRIGGER jobtable_result_stats_update AFTER UPDATE ON jobtable_result WHEN {changed} BEGIN\n"
            f"{_stats_upsert(-1, 'OLD')};\n{_stats_upsert(1, 'NEW')};\nEND",
            f"CREATE TRIGGER jobtable_result_stats_delete AFTER DELETE ON jobtable_result BEGIN\n"
            f"{_stats_upsert(-1, 'OLD')};\nEND",
        ]

    def drop_result_stats_ddl(self) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS jobtable_result_stats_{op}" for op in OPS]

    def compact_result_stats(self, conn: Connection, now: datetime) -> None:
        """Fold the 30-second rows of buckets that started before the fine
        window (``STATS_FINE_KEEP``, whole hours) into hourly rows, then drop
        the rows of buckets that end before the oldest remaining result (and
        over an hour ago), which sum to zero.  A few statements per batch
        instead of the per-row pruning of a trigger."""
        fine, wide = min(tables.STATS_SPANS), max(tables.STATS_SPANS)
        stats = tables.result_stats
        fold_before = int(now.timestamp()) - STATS_FINE_KEEP
        fold_before -= fold_before % wide
        counters = tables.STATS_COUNTERS
        folded = select(
            literal(wide),
            stats.c.bucket_start - stats.c.bucket_start % wide,
            stats.c.queue,
            stats.c.status,
            stats.c.shard,
            *(func.sum(stats.c[c]) for c in counters),
        ).where(stats.c.span == fine, stats.c.bucket_start < fold_before).group_by(
            stats.c.bucket_start - stats.c.bucket_start % wide, stats.c.queue, stats.c.status, stats.c.shard
        )
        insert = sa_sqlite.insert(stats).from_select(
            ["span", "bucket_start", "queue", "status", "shard", *counters], folded
        )
        insert = insert.on_conflict_do_update(
            index_elements=["span", "bucket_start", "queue", "status", "shard"],
            set_={c: stats.c[c] + insert.excluded[c] for c in counters},
        )
        conn.execute(insert)
        conn.execute(delete(stats).where(stats.c.span == fine, stats.c.bucket_start < fold_before))
        oldest = conn.execute(select(func.min(tables.result.c.ended_at))).scalar()
        horizon = int(now.timestamp()) - 3600
        if oldest is not None:
            horizon = min(horizon, int(oldest.timestamp()))
        for span in tables.STATS_SPANS:
            conn.execute(delete(stats).where(stats.c.span == span, stats.c.bucket_start <= horizon - span))


def _stats_upsert(sign: int, ref: str, source: str = "") -> str:
    """One fine-bucket upsert per row of ``ref``: a trigger's NEW or OLD row
    (``source`` empty), or the rows of ``source`` (``FROM ... AS ref``; the
    form of migration 0002's backfill).  Kept flat, as measured (raw inserts
    of 100 rows per transaction: 13 us per row, as much as an upsert of one
    counter; the former form, two spans through grouped delta rows, 37 us):
    the bucket, the wait and its class are computed once per row in a
    subquery, and the counters are plain CASEs on them.  No grouping (each
    row is upserted in turn, which SQLite allows even when two rows share a
    key); no WITH clause (SQLite refuses one inside a trigger)."""
    span = min(tables.STATS_SPANS)
    wait = (
        f"CASE WHEN {ref}.status = '{tables.SUCCESSFUL}' AND {ref}.started_at IS NOT NULL "
        f"AND {ref}.requested_at IS NOT NULL "
        f"THEN max(0.0, (julianday({ref}.started_at) - julianday({ref}.requested_at)) * 86400.0) END"
    )
    # ended_at is SQLAlchemy's text form of a naive UTC datetime.
    row = (
        f"SELECT {ref}.queue AS queue, {ref}.status AS status, {ref}.retried AS retried, "
        f"CAST(strftime('%s', {ref}.ended_at) AS INTEGER) AS t, {wait} AS w {source}"
    )
    values = [
        f"{sign}",
        f"CASE WHEN v.retried THEN {sign} ELSE 0 END",
        *(f"CASE WHEN v.k = {i} THEN {sign} ELSE 0 END" for i in range(tables.WAIT_CLASSES)),
        *(f"CASE WHEN v.k = {i} THEN {'' if sign > 0 else '-'}v.w ELSE 0.0 END" for i in range(tables.WAIT_CLASSES)),
    ]
    # One writer at a time (BEGIN IMMEDIATE): one shard, 0.
    return f"""
INSERT INTO {STATS_TABLE} (span, bucket_start, queue, status, shard, {", ".join(tables.STATS_COUNTERS)})
SELECT {span}, v.t - v.t % {span}, v.queue, v.status, 0, {", ".join(values)}
FROM (SELECT r.*, {wait_class("r.w")} AS k FROM ({row}) AS r) AS v
WHERE true
{on_conflict()}"""


register(SqliteDialect())
