"""What differs between the databases jobtable runs on: the interface.

``Dialect`` lists every operation whose SQL is not the same on each database;
each database implements it in its own module (``postgresql.py``,
``sqlite.py``) and registers one instance here.  Callers find it with
``dialect_of(conn)`` or ``for_name(name)``, or use the module-level functions
below, which do that for them.  Adding a database is one more module and one
more import in ``__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Table, or_
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from .. import tables

#: LISTEN/NOTIFY channel (payload: the queue name); see notify.py.
NOTIFY_CHANNEL = "jobtable"
#: NOTIFY payload telling transports that exchange bindings changed.
BINDINGS_CHANGED = "*bindings"
#: Most rows per INSERT: SQLite allows 32766 bound parameters per statement.
INSERT_BATCH = 1000
STATS_TABLE = tables.result_stats.name
#: Fine buckets only serve the 1-hour window: rows older than this go.
STATS_FINE_KEEP = 7200


class Dialect(ABC):
    name: str

    # -- the queue --

    @abstractmethod
    def insert_requests(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
        """INSERT rows, silently skipping those whose concurrency key is taken.

        Returns (id, task_id) of the rows inserted.  One statement per call.
        """

    @abstractmethod
    def lock_for_enqueue(self, conn: Connection, keys: Sequence[str]) -> None:
        """Serialise enqueues of the given (job class, concurrency key) names
        until the transaction ends, so should_enqueue() and the insert are atomic."""

    @abstractmethod
    def claim(
        self, conn: Connection, queues: Sequence[str], limit: int, values: dict[str, Any]
    ) -> list[Row[Any]]:
        """Mark up to ``limit`` pending jobs of ``queues`` running (setting
        ``values``) and return them: highest priority first, then oldest first.
        Each job goes to exactly one caller."""

    @abstractmethod
    def take_running(self, conn: Connection, worker_id: str, ids: Sequence[int]) -> set[int]:
        """DELETE the rows of ``ids`` still running under ``worker_id`` (the
        guard of a worker's completion); returns the ids deleted."""

    @abstractmethod
    def wake_queues(self, conn: Connection, queues: Sequence[str]) -> None:
        """Wake listeners of ``queues`` (at commit) after rows became pending
        there (requeued, recovered, promoted); one statement for all queues."""

    # -- statements that return or limit rows --

    @abstractmethod
    def update_returning(
        self,
        conn: Connection,
        table: Table,
        where: Sequence[ColumnElement[bool]],
        values: dict[str, Any],
        columns: Sequence[Column[Any]],
    ) -> list[Row[Any]]:
        """UPDATE the rows of ``where`` and return their ``columns`` as the
        update left them, the rows locked until the transaction ends (so a
        counter moved here is seen at its new value by exactly one caller)."""

    @abstractmethod
    def delete_returning(
        self, conn: Connection, table: Table, where: Sequence[ColumnElement[bool]], columns: Sequence[Column[Any]]
    ) -> list[Row[Any]]:
        """DELETE the rows of ``where`` and return their ``columns``."""

    @abstractmethod
    def skip_locked(self, stmt: Select[Any]) -> Select[Any]:
        """``stmt`` locking the rows it reads, skipping rows other
        transactions hold, where the server locks rows (not on SQLite, whose
        write lock already serialises writers)."""

    @abstractmethod
    def in_limited(self, conn: Connection, column: Column[Any], ids: Select[Any]) -> ColumnElement[bool]:
        """``column IN (ids)`` for a select of one column with a LIMIT (a
        batch of rows to update or delete)."""

    @abstractmethod
    def insert_new(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        """INSERT one row unless a row with the same unique key exists;
        True when this call inserted it."""

    # -- the transport and schedules --

    @abstractmethod
    def insert_binding(self, conn: Connection, values: dict[str, Any]) -> bool:
        """Add a Kombu exchange binding unless the same one exists (True: added)."""

    @abstractmethod
    def notify_bindings_changed(self, conn: Connection) -> None:
        """Tell listening Kombu consumers (at commit) to drop their cached
        bindings, so a queue bound now gets what their process publishes
        next rather than after ``binding_cache_seconds``."""

    @abstractmethod
    def schedule_claim(self, conn: Connection, name: str, slot: datetime, now: datetime) -> bool:
        """``schedules_sql.schedule_claim``: move the schedule's ledger row to
        ``slot`` (creating it) unless it is there or past it; True for
        exactly one caller per (name, slot)."""

    @abstractmethod
    def upsert_insert(self, table: Any) -> Any:
        """An INSERT on ``table`` that supports ``on_conflict_do_update`` /
        ``on_conflict_do_nothing``."""

    # -- result stats (dashboard overview) --
    # jobtable_result_stats is kept by triggers on jobtable_result, so that
    # every writer is covered without its cooperation.

    @abstractmethod
    def stats_spans(self) -> tuple[int, ...]:
        """The spans (of ``tables.STATS_SPANS``) the triggers write."""

    @abstractmethod
    def stats_read_spans(self, step: int) -> tuple[int, ...]:
        """The stored spans whose rows, summed into buckets of ``step``
        seconds, give the counts (from ``dividing_spans(step)``)."""

    @abstractmethod
    def result_stats_ddl(self) -> list[str]:
        """Functions and triggers that keep jobtable_result_stats, as the
        stats readers and retention expect them.  Migrations carry their own
        frozen copy (0002 created these); tests/test_migrations.py checks
        that this SQL is what a database at head has, so a change here needs
        a migration."""

    @abstractmethod
    def drop_result_stats_ddl(self) -> list[str]:
        """Drops what ``result_stats_ddl`` creates."""

    @abstractmethod
    def compact_result_stats(self, conn: Connection, now: datetime) -> None:
        """After each retention batch (``operations_sql.clear_results``): whatever
        upkeep the stats rows need beyond their triggers."""


def schedule_claim_by_upsert(dialect: Dialect, conn: Connection, name: str, slot: datetime, now: datetime) -> bool:
    """``Dialect.schedule_claim`` where an upsert takes a WHERE and RETURNING
    (PostgreSQL, SQLite)."""
    schedule = tables.schedule
    stmt = dialect.upsert_insert(schedule).values(name=name, last_slot=slot, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[schedule.c.name],
        set_={"last_slot": stmt.excluded.last_slot, "updated_at": stmt.excluded.updated_at},
        where=or_(schedule.c.last_slot.is_(None), schedule.c.last_slot < stmt.excluded.last_slot),
    ).returning(schedule.c.name)
    return conn.execute(stmt).first() is not None


def dividing_spans(step: int) -> list[int]:
    """The stored spans that divide ``step``, widest first."""
    spans = sorted((s for s in tables.STATS_SPANS if step % s == 0), reverse=True)
    if not spans:
        raise ValueError(f"chart buckets of {step} s are not a multiple of {min(tables.STATS_SPANS)} s")
    return spans


_DIALECTS: dict[str, Dialect] = {}


def register(dialect: Dialect) -> Dialect:
    """Make ``dialect`` the one used for SQLAlchemy dialect ``dialect.name``."""
    _DIALECTS[dialect.name] = dialect
    return dialect


def for_name(name: str) -> Dialect:
    """The dialect of a SQLAlchemy dialect name (``engine.dialect.name``)."""
    return _DIALECTS[name]


def dialect_of(conn: Connection | Engine) -> Dialect:
    return _DIALECTS[conn.dialect.name]


# -- module-level forms (what callers import) --


def wake_queues(conn: Connection, queues: Sequence[str]) -> None:
    dialect_of(conn).wake_queues(conn, queues)


def insert_binding(conn: Connection, values: dict[str, Any]) -> bool:
    return dialect_of(conn).insert_binding(conn, values)


def notify_bindings_changed(conn: Connection) -> None:
    dialect_of(conn).notify_bindings_changed(conn)


def upsert_insert(conn: Connection, table: Any) -> Any:
    return dialect_of(conn).upsert_insert(table)


def stats_spans(dialect: str) -> tuple[int, ...]:
    return for_name(dialect).stats_spans()


def stats_read_spans(dialect: str, step: int) -> tuple[int, ...]:
    return for_name(dialect).stats_read_spans(step)


def result_stats_ddl(dialect: str) -> list[str]:
    return for_name(dialect).result_stats_ddl()


def drop_result_stats_ddl(dialect: str) -> list[str]:
    return for_name(dialect).drop_result_stats_ddl()


def compact_result_stats(conn: Connection, now: datetime) -> None:
    dialect_of(conn).compact_result_stats(conn, now)
