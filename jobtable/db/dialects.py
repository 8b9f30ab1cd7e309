"""Everything that differs between PostgreSQL and SQLite, in one place.

store.py writes portable SQLAlchemy Core and asks this module for the parts
that cannot be portable: conflict handling, locks, and claiming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from . import tables

t = tables.request


class Dialect:
    name: str

    def insert_requests(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
        """INSERT rows, silently skipping those whose concurrency key is taken.

        Returns (id, task_id) of the rows inserted.  One statement per call.
        """
        raise NotImplementedError

    def lock_for_enqueue(self, conn: Connection, keys: Sequence[str]) -> None:
        """Serialise enqueues of the given (job class, concurrency key) names
        until the transaction ends, so should_enqueue() and the insert are atomic."""
        raise NotImplementedError

    def claim(
        self, conn: Connection, queues: Sequence[str], limit: int, values: dict[str, Any]
    ) -> list[Row[Any]]:
        """Mark up to ``limit`` pending jobs of ``queues`` running (setting
        ``values``) and return them: highest priority first, then oldest first.
        Each job goes to exactly one caller."""
        raise NotImplementedError


class PostgresDialect(Dialect):
    name = "postgresql"

    def insert_requests(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
        stmt = postgresql.insert(t).values(list(rows)).on_conflict_do_nothing().returning(t.c.id, t.c.task_id)
        return list(conn.execute(stmt))

    def lock_for_enqueue(self, conn: Connection, keys: Sequence[str]) -> None:
        # Sorted, so that two bulk enqueues cannot deadlock on each other.
        for key in sorted(set(keys)):
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def claim(
        self, conn: Connection, queues: Sequence[str], limit: int, values: dict[str, Any]
    ) -> list[Row[Any]]:
        # One index range scan per queue (ix_jobtable_request_claim), merged;
        # SKIP LOCKED hands each row to one claimer without waiting.
        picked = [
            select(t.c.id, t.c.priority)
            .where(t.c.state == tables.PENDING, t.c.queue == queue)
            .order_by(t.c.priority.desc(), t.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            for queue in queues
        ]
        if len(picked) == 1:
            ids = picked[0].subquery()
        else:
            union = picked[0].union_all(*picked[1:]).subquery()
            ids = select(union.c.id).order_by(union.c.priority.desc(), union.c.id).limit(limit).subquery()
        stmt = (
            update(t)
            .where(t.c.id == ids.c.id)
            .values(state=tables.RUNNING, **values)
            .returning(*t.c)
        )
        rows = list(conn.execute(stmt))
        rows.sort(key=lambda row: (-row.priority, row.id))
        return rows


class SqliteDialect(Dialect):
    name = "sqlite"

    def insert_requests(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
        stmt = sqlite.insert(t).values(list(rows)).on_conflict_do_nothing().returning(t.c.id, t.c.task_id)
        return list(conn.execute(stmt))

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


_DIALECTS: dict[str, Dialect] = {d.name: d for d in (PostgresDialect(), SqliteDialect())}


def dialect_of(conn: Connection) -> Dialect:
    return _DIALECTS[conn.dialect.name]


#: Most rows per INSERT: SQLite allows 32766 bound parameters per statement.
INSERT_BATCH = 1000

