"""What differs between the databases jobtable runs on.

``base.py`` is the interface (``Dialect``: every operation whose SQL is not
the same everywhere) and the lookup (``dialect_of``, ``for_name``); each
database has one module implementing it.  The names below are the API the
rest of ``jobtable.db`` uses: the ``*_sql.py`` modules write portable
SQLAlchemy Core and ask this package for the parts that cannot be portable
(conflict handling, locks, claiming).  A new database is one more module, imported
here so that it registers itself.
"""

from __future__ import annotations

from . import mysql, postgresql, sqlite
from .base import (
    BINDINGS_CHANGED,
    INSERT_BATCH,
    NOTIFY_CHANNEL,
    STATS_FINE_KEEP,
    STATS_TABLE,
    Dialect,
    compact_result_stats,
    dialect_of,
    drop_result_stats_ddl,
    for_name,
    insert_binding,
    notify_bindings_changed,
    register,
    result_stats_ddl,
    stats_read_spans,
    stats_spans,
    upsert_insert,
    wake_queues,
)
from .postgresql import (
    PostgresDialect,
    finish_pg,
    insert_results_pg,
    record_finished_pg,
    transport_claim_pg,
    transport_delete_pg,
)
from .mysql import MysqlDialect
from .sqlite import SqliteDialect

__all__ = [
    "BINDINGS_CHANGED",
    "INSERT_BATCH",
    "NOTIFY_CHANNEL",
    "STATS_FINE_KEEP",
    "STATS_TABLE",
    "Dialect",
    "MysqlDialect",
    "PostgresDialect",
    "SqliteDialect",
    "compact_result_stats",
    "dialect_of",
    "drop_result_stats_ddl",
    "finish_pg",
    "for_name",
    "insert_binding",
    "insert_results_pg",
    "mysql",
    "notify_bindings_changed",
    "postgresql",
    "record_finished_pg",
    "register",
    "result_stats_ddl",
    "sqlite",
    "stats_read_spans",
    "stats_spans",
    "transport_claim_pg",
    "transport_delete_pg",
    "upsert_insert",
    "wake_queues",
]
