"""SQL of the scheduler's ledger: one row per schedule entry holding the
last slot enqueued (or skipped).  See jobtable/scheduler.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from . import tables
from .dialects import dialect_of

schedule = tables.schedule


def schedule_claim(conn: Connection, name: str, slot: datetime, now: datetime) -> bool:
    """Move the entry's ledger to ``slot`` unless it is there or past it.

    True for exactly one caller per (name, slot) across processes: competing
    upserts of one row are serialised (row lock on PostgreSQL, write lock on
    SQLite; MySQL's own statements: ``Dialect.schedule_claim``) and the
    loser's WHERE sees the winner's slot.  A missing row is created, so an
    entry whose row was pruned meanwhile still fires.
    """
    return dialect_of(conn).schedule_claim(conn, name, slot, now)


def schedule_seed(conn: Connection, slots: dict[str, datetime | None], now: datetime) -> None:
    """Create ledger rows of new entries at ``slots`` (None: no slot yet;
    existing rows are kept)."""
    if not slots:
        return
    from .dialects import upsert_insert

    # In key order, the order schedule_prune's DELETE scans (and locks) the
    # rows in: MySQL locks each existing row a seed meets, and two ticks
    # locking the same rows in opposite orders deadlock.
    rows = [{"name": name, "last_slot": slot, "updated_at": now} for name, slot in sorted(slots.items())]
    conn.execute(upsert_insert(conn, schedule).values(rows).on_conflict_do_nothing())


def schedule_rows(conn: Connection) -> dict[str, Row[Any]]:
    """Every ledger row by entry name."""
    return {row.name: row for row in conn.execute(select(schedule))}


def schedule_prune(conn: Connection, keep: Sequence[str]) -> list[str]:
    """Delete ledger rows of entries not in ``keep``; returns their names."""
    where = [schedule.c.name.not_in(list(keep))] if keep else []
    return sorted(row.name for row in dialect_of(conn).delete_returning(conn, schedule, where, [schedule.c.name]))
