"""PostgreSQL: what jobtable does differently there (see base.Dialect).

Claims lock with FOR UPDATE SKIP LOCKED, enqueues lock advisory locks, and
NOTIFY wakes listeners at commit.  The hot statements (insert, claim, finish,
the transport's claim and ack) are driver SQL built once per shape: compiling
the equivalent Core statement on every call cost more client time than
PostgreSQL takes to run it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Column, Table, bindparam, delete, text, update
from sqlalchemy.dialects import postgresql as sa_postgresql
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from .. import tables
from .base import (
    BINDINGS_CHANGED,
    NOTIFY_CHANNEL,
    STATS_FINE_KEEP,
    STATS_TABLE,
    Dialect,
    dividing_spans,
    register,
    schedule_claim_by_upsert,
)
from .observed import observed
from .stats_sql import OPS, SOURCE_COLUMNS, on_conflict, wait_class

t = tables.request


class PostgresDialect(Dialect):
    name = "postgresql"
    #: Rows per insert_requests call (enqueue_sql): arrays and COPY have no
    #: bound-parameter limit, and a bigger COPY costs less per row.
    insert_batch = 10_000

    def insert_requests(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Row[Any]]:
        # One cached statement whatever the number of rows: the rows travel as
        # one array per column through unnest(), so SQLAlchemy compiles
        # nothing per call (a multi-row VALUES clause costs more to compile
        # than PostgreSQL takes to run it).
        #
        # The NOTIFY that wakes idle workers rides in the same statement: no
        # extra round trip, one pg_notify per distinct queue, folded with
        # duplicates by PostgreSQL within a transaction, and delivered at
        # commit -- a worker never wakes before the row is visible.
        columns = tuple(rows[0])
        if len(rows) == 1:
            # The common single enqueue: plain VALUES, cheaper to send than
            # one-element arrays.
            sql = _PG_INSERT_SQL.get((columns, None))
            if sql is None:
                sql = _PG_INSERT_SQL[(columns, None)] = _pg_insert_sql(columns, None)
            return _driver_rows(conn, sql, rows[0])
        if len(rows) >= _COPY_MIN and _copyable(conn, columns, rows):
            return _copy_rows(conn, columns, rows)
        # A column whose value is the same in every row (the queue, the task
        # name, the times of one call...) is bound once as a scalar; only
        # the others travel as arrays.  Dumping the arrays was most of the
        # client's cost of a bulk insert, and PostgreSQL reads fewer arrays.
        first = rows[0]
        params: dict[str, Any] = {}
        constant = []
        for column in columns:
            values = [row[column] for row in rows]
            value = first[column]
            if value.__class__ in _SCALAR_TYPES and values.count(value) == len(values) and all(
                v.__class__ is value.__class__ for v in values
            ):
                constant.append(column)
                params[column] = value
            else:
                params[column] = values
        if len(constant) == len(columns):
            # Identical rows (by hand): they stay one row each.
            params[columns[0]] = [first[columns[0]]] * len(rows)
            constant.pop(0)
        key = (columns, frozenset(constant))
        sql = _PG_INSERT_SQL.get(key)
        if sql is None:
            sql = _PG_INSERT_SQL[key] = _pg_insert_sql(columns, key[1])
        return _driver_rows(conn, sql, params)

    def lock_for_enqueue(self, conn: Connection, keys: Sequence[str]) -> None:
        # Sorted, so that two bulk enqueues cannot deadlock on each other.
        for key in sorted(set(keys)):
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def claim(
        self, conn: Connection, queues: Sequence[str], limit: int, values: dict[str, Any]
    ) -> list[Row[Any]]:
        # Textual SQL built once per number of queues (see _pg_pick_sql):
        # building and compiling the equivalent Core statement on every
        # claim cost more client time than PostgreSQL takes to run it.
        stmt = _PG_CLAIM.get(len(queues))
        if stmt is None:
            stmt = _PG_CLAIM[len(queues)] = (
                text(
                    "UPDATE jobtable_request r SET state = 'running', worker_id = :worker_id, "
                    "started_at = :started_at, lease_expires_at = :lease_expires_at "
                    f"FROM ({_pg_pick_sql(len(queues))}) p WHERE r.id = p.id RETURNING r.*"
                )
                .bindparams(
                    bindparam("started_at", type_=t.c.started_at.type),
                    bindparam("lease_expires_at", type_=t.c.lease_expires_at.type),
                )
                .columns(*t.c)
            )
        params: dict[str, Any] = {f"q{i}": queue for i, queue in enumerate(queues)}
        params.update(limit=limit, **values)
        rows = list(conn.execute(stmt, params))
        rows.sort(key=lambda row: (-row.priority, row.id))
        return rows

    def take_running(self, conn: Connection, worker_id: str, ids: Sequence[int]) -> set[int]:
        rows = conn.exec_driver_sql(_PG_DELETE_HELD + " RETURNING id", {"ids": list(ids), "worker": worker_id})
        return {row[0] for row in rows}

    def wake_queues(self, conn: Connection, queues: Sequence[str]) -> None:
        if queues:
            conn.exec_driver_sql(
                "SELECT pg_notify(%(channel)s, q) FROM unnest(%(queues)s::text[]) AS q",
                {"channel": NOTIFY_CHANNEL, "queues": sorted(set(queues))},
            )

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
        return stmt.with_for_update(skip_locked=True)

    def in_limited(self, conn: Connection, column: Column[Any], ids: Select[Any]) -> ColumnElement[bool]:
        return column.in_(ids.scalar_subquery())

    def insert_new(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        # RETURNING, not rowcount: psycopg reports -1 for a single-row INSERT here.
        key = next(iter(table.primary_key.columns))
        stmt = sa_postgresql.insert(table).values(values).on_conflict_do_nothing().returning(key)
        return conn.execute(stmt).first() is not None

    def insert_binding(self, conn: Connection, values: dict[str, Any]) -> bool:
        return bool(conn.execute(sa_postgresql.insert(tables.binding).values(values).on_conflict_do_nothing()).rowcount)

    def notify_bindings_changed(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": BINDINGS_CHANGED})

    def schedule_claim(self, conn: Connection, name: str, slot: datetime, now: datetime) -> bool:
        return schedule_claim_by_upsert(self, conn, name, slot, now)

    def upsert_insert(self, table: Any) -> Any:
        return sa_postgresql.insert(table)

    # -- result stats --

    def stats_spans(self) -> tuple[int, ...]:
        # Every span: statement triggers upsert a few grouped rows, so the
        # wider spans cost little.
        return tables.STATS_SPANS

    def stats_read_spans(self, step: int) -> tuple[int, ...]:
        # The widest span that divides the step.
        return tuple(dividing_spans(step)[:1])

    def result_stats_ddl(self) -> list[str]:
        return _stats_ddl()

    def drop_result_stats_ddl(self) -> list[str]:
        return [
            *(f"DROP TRIGGER IF EXISTS jobtable_result_stats_{op} ON jobtable_result" for op in OPS),
            *(f"DROP FUNCTION IF EXISTS jobtable_result_stats_{op}()" for op in OPS),
            "DROP FUNCTION IF EXISTS jobtable_result_stats_shard()",
        ]

    def compact_result_stats(self, conn: Connection, now: datetime) -> None:
        # Nothing: the triggers write hourly rows and the delete trigger prunes.
        pass


class _Inserted(NamedTuple):
    id: int
    task_id: str
    notified: Any


def _driver_rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    """``exec_driver_sql(sql, params)``'s rows, run on psycopg directly.

    For the single enqueue, whose whole cost is one INSERT: SQLAlchemy's
    execution context and result set-up cost more client time than psycopg
    takes to send the statement (about half of an enqueue's CPU).  The
    statement is the same, prepared by psycopg as before (its
    ``prepare_threshold``, so ``prepare_threshold=None`` for PgBouncer still
    holds).  Errors go through SQLAlchemy's own handling -- wrapped in
    ``DBAPIError``, a dropped connection invalidated with its pool, which
    ``db/retry.py`` relies on.  A connection with execution events (SQL
    logging, ``echo``, tracing instrumentation) takes SQLAlchemy's path, so
    that they see the statement as before; so does one that SQLAlchemy
    would begin a transaction on (commit-as-you-go: the caller's
    ``conn.commit()`` must find it), the others being in autocommit mode
    (``retry._autocommit``) or in a transaction already (``connection=``).
    """
    driver: Any = conn.connection.driver_connection
    if _observed(conn) or not (driver.autocommit or conn.in_transaction()):
        return list(conn.exec_driver_sql(sql, params))
    cursor = None
    try:
        cursor = driver.cursor()
        cursor.execute(sql, params)
        rows = [_Inserted(*row) for row in cursor.fetchall()]
        cursor.close()
        return rows
    except BaseException as exc:
        if isinstance(exc, conn.dialect.loaded_dbapi.Error) or not isinstance(exc, Exception):
            # Raises: DBAPIError (connection_invalidated on a disconnect).
            conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        raise


def _observed(conn: Connection) -> bool:
    return observed(conn.dispatch, conn._echo, conn.dialect)


#: Batches of at least this many rows go by COPY when they can (_copyable):
#: below it, COPY's extra round trip costs more than it saves.
_COPY_MIN = 64
#: The batch's ids, taken from the table's sequence in one statement, and
#: its NOTIFY (one per distinct queue, delivered at commit like the INSERT's).
#: One row, the ids in one array: a row per id cost more client time than
#: the COPY's own (SQLAlchemy's row processing).
_PG_COPY_IDS = (
    "SELECT ARRAY(SELECT nextval((SELECT pg_get_serial_sequence('jobtable_request', 'id'))::regclass) "
    "FROM generate_series(1, %(n)s)), "
    f"(SELECT count(pg_notify('{NOTIFY_CHANNEL}', q)) FROM unnest(%(queues)s::text[]) AS q)"
)


def _copyable(conn: Connection, columns: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> bool:
    """Whether COPY may insert ``rows``.  COPY has no ON CONFLICT: no row may
    carry a unique key (the default concurrency limit).  The connection
    must be in a transaction, not autocommit: the NOTIFY is a statement of
    its own and must be delivered with the rows' commit, not before it.  A
    connection with execution events or echo takes the INSERT, which they
    see (as in _driver_rows)."""
    if len(columns) < 2 or "id" in columns or not _PG_CASTS.keys() >= set(columns):
        return False
    if "unique_key" in columns and any(row["unique_key"] is not None for row in rows):
        return False
    driver: Any = conn.connection.driver_connection
    return not (_observed(conn) or driver.autocommit) and _copy_safe(columns, rows)


_INT_RANGES = {"int2": (-(2**15), 2**15 - 1), "int4": (-(2**31), 2**31 - 1), "int8": (-(2**63), 2**63 - 1)}


def _copy_safe(columns: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every value has the exact Python type of its column's.  Binary
    COPY stores what psycopg's dumper of the column's type makes of a value,
    and those wrap an int out of range around silently (40000 into int2 is
    stored as -25536) where the INSERT's cast fails; other types or naive
    times take the INSERT too, whose casts say what is wrong."""
    # map() of C callables: no Python bytecode per row.
    try:
        for column in columns:
            pg_type = _PG_CASTS[column]
            if pg_type in _INT_RANGES:
                low, high = _INT_RANGES[pg_type]
                values = set(map(operator.itemgetter(column), rows))  # few distinct
                if not all(v is None or (v.__class__ is int and low <= v <= high) for v in values):
                    return False
            elif pg_type == "timestamptz":
                values = set(map(operator.itemgetter(column), rows))
                if not all(v is None or (v.__class__ is datetime and v.tzinfo is not None) for v in values):
                    return False
            elif not set(map(type, map(operator.itemgetter(column), rows))) <= _TEXT_TYPES:
                return False
    except TypeError:  # an unhashable value
        return False
    return True


_TEXT_TYPES = {str, type(None)}


def _copy_rows(conn: Connection, columns: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Insert ``rows`` by binary COPY: 1.1-1.8x the rows per second of the
    ``unnest`` INSERT on bare psycopg (its multi-row heap insert; the
    INSERT's per-row executor work was the statement's limit:
    bench/RESULTS.md, issue 13 steps 2-3).  COPY returns nothing, so the ids
    come first from the sequence (ascending, given in the rows' order: a
    batch keeps its FIFO order), in the statement that also sends the
    NOTIFY.  That statement goes through SQLAlchemy, which begins the
    caller's transaction if it has not yet (commit-as-you-go)."""
    queues = sorted({row["queue"] for row in rows})
    ids = sorted(conn.exec_driver_sql(_PG_COPY_IDS, {"n": len(rows), "queues": queues}).one()[0])
    sql = f"COPY jobtable_request (id, {', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    driver: Any = conn.connection.driver_connection
    cursor = None
    try:
        cursor = driver.cursor()
        with cursor.copy(sql) as copy:
            copy.set_types(["int8", *(_PG_CASTS[c] for c in columns)])
            values = operator.itemgetter(*columns)
            for row_id, row in zip(ids, rows):
                copy.write_row((row_id, *values(row)))
        cursor.close()
    except BaseException as exc:
        if isinstance(exc, conn.dialect.loaded_dbapi.Error) or not isinstance(exc, Exception):
            conn._handle_dbapi_exception(exc, sql, {}, cursor, None)
        raise
    return [_Inserted(row_id, row["task_id"], None) for row_id, row in zip(ids, rows)]


_PG_CLAIM: dict[int, Any] = {}


def _pg_pick_sql(queues: int) -> str:
    """The ids (and priorities) of up to ``:limit`` pending jobs of the
    queues ``:q0``, ``:q1``..., locked with SKIP LOCKED so that each goes to
    one claimer: one index range scan per queue (ix_jobtable_request_claim),
    merged.  Each locking SELECT sits in its own subquery: PostgreSQL refuses
    FOR UPDATE directly under UNION."""
    branches = [
        f"SELECT id, priority FROM (SELECT id, priority FROM jobtable_request "
        f"WHERE state = 'pending' AND queue = :q{i} ORDER BY priority DESC, id "
        f"LIMIT :limit FOR UPDATE SKIP LOCKED) b{i}"
        for i in range(queues)
    ]
    if queues == 1:
        return branches[0]
    return f"SELECT id FROM ({' UNION ALL '.join(branches)}) u ORDER BY priority DESC, id LIMIT :limit"


_PG_CASTS = {"task_id": "varchar", "task_name": "varchar", "queue": "varchar", "priority": "int2", "state": "varchar",
             "run_at": "timestamptz", "expires_at": "timestamptz", "concurrency_key": "varchar", "attempt": "int4",
             "unique_key": "varchar",
             "retries": "int4", "created_at": "timestamptz", "started_at": "timestamptz", "worker_id": "varchar",
             "lease_expires_at": "timestamptz", "message": "text", "deliveries": "int4"}
_PG_INSERT_SQL: dict[tuple[tuple[str, ...], frozenset[str] | None], str] = {}
#: Values that may be bound once for a whole batch: equal ones are the
#: same value to PostgreSQL (None included: a NULL scalar).
_SCALAR_TYPES = (str, int, bool, type(None), datetime)


def _pg_insert_sql(columns: tuple[str, ...], constant: frozenset[str] | None) -> str:
    """The INSERT of rows with ``columns``: one row of VALUES when
    ``constant`` is None, else an ``unnest`` of one array per column not in
    ``constant``, the others bound once as scalars."""
    unknown = set(columns) - set(_PG_CASTS)
    if unknown:
        raise ValueError(f"Unknown jobtable_request column(s): {sorted(unknown)}")
    if constant is None:
        values = ", ".join(f"%({c})s::{_PG_CASTS[c]}" for c in columns)
        return (
            f"WITH ins AS (INSERT INTO jobtable_request ({', '.join(columns)}) VALUES ({values}) "
            "ON CONFLICT DO NOTHING RETURNING id, task_id, queue) "
            f"SELECT ins.id, ins.task_id, pg_notify('{NOTIFY_CHANNEL}', ins.queue) FROM ins"
        )
    # Binary parameters (%b): text-format arrays make psycopg escape every
    # JSON message with a regex, which cost more than the INSERT itself.
    varying = [c for c in columns if c not in constant]
    arrays = ", ".join(f"%({c})b::{_PG_CASTS[c]}[]" for c in varying)
    names = ", ".join(f"u{i}" for i in range(len(varying)))
    picks = ", ".join(
        f"%({c})b::{_PG_CASTS[c]}" if c in constant else f"u.u{varying.index(c)}" for c in columns
    )
    return (
        f"WITH ins AS (INSERT INTO jobtable_request ({', '.join(columns)}) SELECT {picks} "
        f"FROM unnest({arrays}) AS u({names}) "
        "ON CONFLICT DO NOTHING RETURNING id, task_id, queue) "
        "SELECT ins.id, ins.task_id, n.n FROM ins CROSS JOIN "
        f"(SELECT count(pg_notify('{NOTIFY_CHANNEL}', q.queue)) AS n FROM (SELECT DISTINCT queue FROM ins) q) n"
    )


#: The rows of ``ids`` that ``worker`` still runs (a native member finishing
#: them, a Kombu consumer acking them) leave the table.  One statement
#: whatever the number of ids (an array, not an IN list).
_PG_DELETE_HELD = (
    "DELETE FROM jobtable_request WHERE id = ANY(%(ids)s::int8[]) AND worker_id = %(worker)s AND state = 'running'"
)


_RESULT_CASTS = {
    "task_id": "varchar", "task_name": "varchar", "queue": "varchar", "priority": "int2", "attempt": "int4",
    "retries": "int4", "concurrency_key": "varchar", "status": "varchar", "requested_at": "timestamptz",
    "started_at": "timestamptz", "ended_at": "timestamptz", "worker_id": "varchar", "message": "text",
    "return_value": "text", "error_type": "varchar", "error_message": "text", "traceback": "text",
    "retried": "bool", "meta": "text",
}
_RESULT_COLUMNS = tuple(_RESULT_CASTS)
_RESULT_INSERT_PG = (
    f"INSERT INTO jobtable_result ({', '.join(_RESULT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%({c})s::{_RESULT_CASTS[c]}[]" for c in _RESULT_COLUMNS)
    + ") ON CONFLICT DO NOTHING"
)


def insert_results_pg(conn: Connection, values: Sequence[dict[str, Any]]) -> None:
    """All result rows in one statement (one array per column): one round
    trip, one execution of any statement trigger, nothing to compile."""
    params = {column: [row.get(column) for row in values] for column in _RESULT_COLUMNS}
    conn.exec_driver_sql(_RESULT_INSERT_PG, params)


_FINISH_PG = """
WITH d AS (
    DELETE FROM jobtable_request
    WHERE id = ANY(%(ids)s::int8[]) AND worker_id = %(worker)s AND state = 'running'
    RETURNING *
), v AS (
    SELECT * FROM unnest(
        %(ids)s::int8[], %(status)b::varchar[], %(started_at)b::timestamptz[], %(ended_at)b::timestamptz[],
        %(return_value)b::text[], %(error_type)b::varchar[], %(error_message)b::text[], %(traceback)b::text[],
        %(retried)b::bool[]
    ) AS v(id, status, started_at, ended_at, return_value, error_type, error_message, traceback, retried)
), ins AS (
    INSERT INTO jobtable_result (
        task_id, task_name, queue, priority, attempt, retries, concurrency_key, status, requested_at,
        started_at, ended_at, worker_id, message, return_value, error_type, error_message, traceback, retried
    )
    SELECT d.task_id, d.task_name, d.queue, d.priority, d.attempt, d.retries, d.concurrency_key, v.status,
           d.created_at, v.started_at, v.ended_at, d.worker_id, d.message, v.return_value, v.error_type,
           v.error_message, v.traceback, v.retried
    FROM d JOIN v ON v.id = d.id
    ON CONFLICT DO NOTHING
)
SELECT id FROM d
"""


def finish_pg(conn: Connection, worker_id: str, outcomes: Sequence[Any]) -> set[int]:
    """The guarded completion in one statement: delete the rows still
    running under ``worker_id`` and insert their results, copying the
    message and the other request columns server-side (nothing large
    travels back; arrays go in binary, so long strings need no escaping).
    ``retried`` is written as requested; the caller fixes
    it in the rare case the retry could not be enqueued."""
    fields = [o.fields for o in outcomes]
    params = {
        "ids": [o.row.id for o in outcomes],
        "worker": worker_id,
        "status": [o.status for o in outcomes],
        "started_at": [f.get("started_at", o.row.started_at) for f, o in zip(fields, outcomes)],
        "ended_at": [o.ended_at for o in outcomes],
        "return_value": [f.get("return_value") for f in fields],
        "error_type": [f.get("error_type") for f in fields],
        "error_message": [f.get("error_message") for f in fields],
        "traceback": [f.get("traceback") for f in fields],
        "retried": [o.retry_at is not None for o in outcomes],
    }
    return {row[0] for row in conn.exec_driver_sql(_FINISH_PG, params)}


_RECORD_FINISHED_PG = """
WITH d AS (
    DELETE FROM jobtable_request
    WHERE id = ANY(%(ids)s::int8[]) AND worker_id = %(worker)s AND state = 'running'
    RETURNING *
), v AS (
    SELECT * FROM unnest(%(ids)s::int8[], %(status)b::varchar[], %(error_type)b::varchar[], %(error_message)b::text[])
        AS v(id, status, error_type, error_message)
), ins AS (
    INSERT INTO jobtable_result (
        task_id, task_name, queue, priority, attempt, retries, concurrency_key, status, requested_at,
        started_at, ended_at, worker_id, message, error_type, error_message, retried
    )
    SELECT d.task_id, d.task_name, d.queue, d.priority, d.attempt, d.retries, d.concurrency_key, v.status,
           d.created_at, d.started_at, %(ended_at)s, d.worker_id, d.message, v.error_type, v.error_message, false
    FROM d JOIN v ON v.id = d.id
    ON CONFLICT DO NOTHING
)
SELECT id FROM d
"""


def record_finished_pg(
    conn: Connection, worker_id: str, entries: Sequence[tuple[int, str, str, str]], ended_at: datetime
) -> set[int]:
    """Rescue's counterpart of ``finish_pg`` for a dead member's finished
    jobs whose outcomes died with it (``entries``: row id, status,
    error_type, error_message; not retried): the rows still running under
    ``worker_id`` become results in one statement, the message and the
    other request columns copied server-side -- a dead member's batch is up
    to a hundred rows, which would otherwise travel back and forth (and be
    escaped into text arrays) while the drain goes on.  Returns the ids written."""
    params = {
        "ids": [e[0] for e in entries],
        "worker": worker_id,
        "status": [e[1] for e in entries],
        "error_type": [e[2] for e in entries],
        "error_message": [e[3] for e in entries],
        "ended_at": ended_at,
    }
    return {row[0] for row in conn.exec_driver_sql(_RECORD_FINISHED_PG, params)}


# -- transport hot path (PostgreSQL) --
#
# Kombu consumers claim and ack on every message: these statements are
# textual SQL built once per shape, so nothing is compiled per call and
# PostgreSQL sees the same (prepared) statement every time.

#: Turns synchronous_commit off for the statement's own autocommit
#: transaction, in the same round trip (see transport_sql._sync_commit_off).
_PG_ASYNC = " AND set_config('synchronous_commit', 'off', true) IS NOT NULL"
_PG_TRANSPORT_CLAIM: dict[tuple[int, bool], Any] = {}


def transport_claim_pg(
    conn: Connection,
    queues: Sequence[str],
    limit: int,
    *,
    consumer_id: str,
    lease_expires_at: Any,
    async_commit: bool,
) -> list[Row[Any]]:
    """The Kombu consumer's claim: counts the delivery, returns only what a
    delivery needs."""
    key = (len(queues), async_commit)
    stmt = _PG_TRANSPORT_CLAIM.get(key)
    if stmt is None:
        stmt = _PG_TRANSPORT_CLAIM[key] = (
            text(
                # started_at: set when the consumer reports the task started
                # (transport_sql.transport_mark_started), not at delivery.
                "UPDATE jobtable_request r SET state = 'running', worker_id = :worker, started_at = NULL, "
                "lease_expires_at = :lease, deliveries = r.deliveries + 1 "
                f"FROM ({_pg_pick_sql(len(queues))}) p WHERE r.id = p.id{_PG_ASYNC if async_commit else ''} "
                "RETURNING r.id, r.queue, r.priority, r.deliveries, r.expires_at, r.message"
            )
            .bindparams(bindparam("lease", type_=t.c.lease_expires_at.type))
            .columns(t.c.id, t.c.queue, t.c.priority, t.c.deliveries, t.c.expires_at, t.c.message)
        )
    params: dict[str, Any] = {f"q{i}": queue for i, queue in enumerate(queues)}
    params.update(limit=limit, worker=consumer_id, lease=lease_expires_at)
    rows = list(conn.execute(stmt, params))
    rows.sort(key=lambda row: (-row.priority, row.id))
    return rows


def transport_delete_pg(conn: Connection, ids: Sequence[int], consumer_id: str, async_commit: bool) -> int:
    """Acks: the rows this consumer still holds leave the table."""
    sql = _PG_DELETE_HELD + (_PG_ASYNC if async_commit else "")
    return int(conn.exec_driver_sql(sql, {"ids": list(ids), "worker": consumer_id}).rowcount)


# -- result stats (dashboard overview; the shared fragments: stats_sql.py) --

#: Transaction advisory lock taken by the PostgreSQL delete trigger: deletions
#: of results (retention, dashboard, forget) prune stats rows of every shard,
#: so two of them must not run their pruning at once (they would wait on each
#: other's rows).  Writers that only insert never take it.
_STATS_PRUNE_LOCK = 0x6A6F627374617473  # "jobstats"


def _stats_delta_rows(source: str) -> str:
    """``source`` rows with their queue wait and wait class."""
    # date_part: double precision (extract() computes in numeric).
    wait = "greatest(0, date_part('epoch', d.started_at - d.requested_at))"
    return f"""
    SELECT v.*, {wait_class("v.wait")} AS wait_class
    FROM (
        SELECT d.sign, d.queue, d.status, d.ended_at, d.retried,
               CASE WHEN d.status = '{tables.SUCCESSFUL}' AND d.started_at IS NOT NULL
                         AND d.requested_at IS NOT NULL THEN {wait} END AS wait
        FROM ({source}) AS d
    ) AS v"""


def _stats_upsert(source: str, shard: str = "0") -> str:
    # The per-row work (the trigger's cost on every batch of results) is kept
    # small: rows are grouped once by (finest bucket, queue, status, wait
    # class) with three sums, in double precision; the wait classes are then
    # spread into their columns and the fine buckets rolled up into the wider
    # ones, both on the few grouped rows.
    spans = sorted(tables.STATS_SPANS)
    fine = spans[0]
    counters = tables.STATS_COUNTERS
    classes = range(tables.WAIT_CLASSES)
    pivot = ", ".join(
        [
            "sum(g.n) AS results",
            "sum(g.r) AS retried",
            *(f"coalesce(sum(g.n) FILTER (WHERE g.wait_class = {i}), 0) AS wait_count_{i}" for i in classes),
            *(f"coalesce(sum(g.ws) FILTER (WHERE g.wait_class = {i}), 0) AS wait_sum_{i}" for i in classes),
        ]
    )
    nonzero = " OR ".join(f"{c} <> 0" for c in counters)
    rollups = [f"SELECT {fine} AS span, f.bucket_start, f.queue, f.status, {', '.join(counters)} FROM f WHERE {nonzero}"]
    for span in spans[1:]:
        rollups.append(
            f"SELECT {span}, f.bucket_start - f.bucket_start % {span}, f.queue, f.status, "
            + ", ".join(f"sum({c})" for c in counters)
            + f" FROM f GROUP BY 2, 3, 4 HAVING {' OR '.join(f'sum({c}) <> 0' for c in counters)}"
        )
    return f"""
WITH g AS (
    SELECT (floor(date_part('epoch', w.ended_at) / {fine}) * {fine})::bigint AS bucket_start, w.queue, w.status,
           w.wait_class, sum(w.sign) AS n, sum(CASE WHEN w.retried THEN w.sign ELSE 0 END) AS r,
           sum(w.sign * w.wait) AS ws
    FROM ({_stats_delta_rows(source)}) AS w
    GROUP BY 1, 2, 3, 4
), f AS (
    SELECT g.bucket_start, g.queue, g.status, {pivot}
    FROM g
    GROUP BY 1, 2, 3
)
INSERT INTO {STATS_TABLE} (span, bucket_start, queue, status, shard, {", ".join(counters)})
SELECT r.span, r.bucket_start, r.queue, r.status, {shard}, {", ".join(f"r.{c}" for c in counters)}
FROM ({" UNION ALL ".join(rollups)}) AS r(span, bucket_start, queue, status, {", ".join(counters)})
ORDER BY 1, 2, 3, 4
{on_conflict()}
"""


def _source(sign: int, relation: str) -> str:
    return f"SELECT {sign} AS sign, {SOURCE_COLUMNS} FROM {relation}"


#: Advisory lock class of the shards (``pg_try_advisory_xact_lock(class, shard)``).
_STATS_SHARD_LOCK_CLASS = 0x6A6F6273  # "jobs"
#: Transaction-local setting remembering the shard a transaction holds.
_STATS_SHARD_SETTING = "jobtable.stats_shard"


def _stats_ddl() -> list[str]:
    # Statement-level triggers with transition tables: one aggregate upsert per
    # statement, however many rows it wrote (the worker writes a batch of
    # results in one statement).  An INSERT ... ON CONFLICT DO UPDATE (the
    # Celery backend's upsert) fires the insert trigger with the rows it
    # inserted and the update trigger with the rows it updated.
    #
    # Shards: a transaction that writes results first takes a free shard --
    # a transaction-level advisory lock, tried from pg_backend_pid() % N on --
    # and keeps it until it ends.  No two open transactions therefore ever
    # write the same stats row: writers never wait on each other's rows and
    # cannot deadlock on them, whatever order their statements touch buckets
    # in.  Only when every shard is held does a writer wait for one (holding
    # no stats row itself, so it closes no cycle).
    shards = tables.STATS_SHARDS
    shard_function = f"""CREATE FUNCTION jobtable_result_stats_shard() RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    held text := current_setting('{_STATS_SHARD_SETTING}', true);
    first int := pg_backend_pid() % {shards};
    candidate int;
BEGIN
    IF held IS NOT NULL AND held <> '' THEN
        RETURN held::smallint;
    END IF;
    FOR i IN 0..{shards - 1} LOOP
        candidate := (first + i) % {shards};
        IF pg_try_advisory_xact_lock({_STATS_SHARD_LOCK_CLASS}, candidate) THEN
            PERFORM set_config('{_STATS_SHARD_SETTING}', candidate::text, true);
            RETURN candidate;
        END IF;
    END LOOP;
    PERFORM pg_advisory_xact_lock({_STATS_SHARD_LOCK_CLASS}, first);
    PERFORM set_config('{_STATS_SHARD_SETTING}', first::text, true);
    RETURN first;
END $$"""
    now = "extract(epoch FROM now())::bigint"
    prune = f"""
        PERFORM pg_advisory_xact_lock({_STATS_PRUNE_LOCK});
        IF EXISTS (SELECT 1 FROM old_rows) THEN
            my_shard := jobtable_result_stats_shard();
            {_stats_upsert(_source(-1, "old_rows"), "my_shard")};
        END IF;
        -- Pruning runs even after an empty delete: the worker's retention
        -- runs every minute, deleting something or not.
        -- Buckets that end before the oldest remaining result (and over an
        -- hour ago, so that no writer is still adding to them) sum to zero
        -- over their shards: drop every shard's row.
        horizon := least(
            coalesce(extract(epoch FROM (SELECT min(ended_at) FROM jobtable_result))::bigint, {now}),
            {now} - 3600);
        DELETE FROM {STATS_TABLE} WHERE span = 3600 AND bucket_start <= horizon - 3600;
        DELETE FROM {STATS_TABLE} WHERE span = 30 AND bucket_start < {now} - {STATS_FINE_KEEP};"""
    # A statement that wrote no row (statement triggers fire anyway) takes no
    # shard: it would hold it, for nothing, until its transaction ends.
    skip_empty = "IF NOT EXISTS (SELECT 1 FROM {}) THEN RETURN NULL; END IF;\n"
    bodies = {
        "insert": skip_empty.format("new_rows") + "my_shard := jobtable_result_stats_shard();\n"
        f"{_stats_upsert(_source(1, 'new_rows'), 'my_shard')};",
        "update": skip_empty.format("new_rows") + "my_shard := jobtable_result_stats_shard();\n"
        + _stats_upsert(_source(1, "new_rows") + " UNION ALL " + _source(-1, "old_rows"), "my_shard")
        + ";",
        "delete": prune,
    }
    referencing = {
        "insert": "REFERENCING NEW TABLE AS new_rows",
        "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "delete": "REFERENCING OLD TABLE AS old_rows",
    }
    out = [shard_function]
    for op in OPS:
        out.append(
            f"CREATE FUNCTION jobtable_result_stats_{op}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"DECLARE horizon bigint; my_shard smallint;\nBEGIN\n{bodies[op]}\nRETURN NULL;\nEND $$"
        )
        out.append(
            f"CREATE TRIGGER jobtable_result_stats_{op} AFTER {op.upper()} ON jobtable_result "
            f"{referencing[op]} FOR EACH STATEMENT EXECUTE FUNCTION jobtable_result_stats_{op}()"
        )
    return out


register(PostgresDialect())
