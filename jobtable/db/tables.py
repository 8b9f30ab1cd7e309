"""The queue's tables (SQLAlchemy Core).  Alembic migrations in ``migrations/``
create them; this module is what the code queries.  Keep the two in step.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# The state and status names live below this module and messages.py, which
# builds rows in them (states.py); they are read here as tables.PENDING & co.
from ..states import (
    CANCELLED as CANCELLED,
    DEAD_LETTER as DEAD_LETTER,
    DEFERRED as DEFERRED,
    ERRORED as ERRORED,
    LOST as LOST,
    PENDING as PENDING,
    QUARANTINED as QUARANTINED,
    RESULT_STATUSES as RESULT_STATUSES,
    RUNNING as RUNNING,
    SCHEDULED as SCHEDULED,
    SUCCESSFUL as SUCCESSFUL,
)
from .types import BigIntPK, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


#: The dialects with partial indexes (``WHERE`` in CREATE INDEX); MySQL
#: gets indexes that lead with the column the predicate tests instead.
PARTIAL_INDEX_DIALECTS = ("postgresql", "sqlite")



def _has_partial_indexes(
    ddl: Any,
    target: Any,
    bind: Any,
    tables: Any = None,
    state: Any = None,
    *,
    dialect: Any,
    compiler: Any = None,
    checkfirst: bool = False,
) -> bool:
    """ddl_if: create the partial form of an index on these dialects only
    (``ddl_if(dialect=<tuple>)`` works too, but is typed for one name)."""
    return bool(dialect.name in PARTIAL_INDEX_DIALECTS)


#: Priority is stored as SMALLINT on every dialect.
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767

request = Table(
    "jobtable_request",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    # Celery task id; a retry keeps it, so it is not unique here.
    Column("task_id", String(255), nullable=False),
    # Registered job name or Celery task name.
    Column("task_name", String(255), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default=text("0")),
    Column("state", String(16), nullable=False),
    # When the job becomes due (the enqueue time unless delayed).
    Column("run_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("concurrency_key", String(255), nullable=True),
    # 1 for the first attempt; Celery's ``retries`` header is ``attempt - 1``.
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    # Retries allowed after the first attempt (Job API).
    Column("retries", Integer, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("worker_id", String(255), nullable=True),
    # Claims by Kombu consumers expire unless renewed (crash safety).
    Column("lease_expires_at", UTCDateTime, nullable=True),
    # How many times the row was claimed: the Kombu transport marks a
    # message ``redelivered`` when it is above 1 (after a requeue or a crash).
    Column("deliveries", Integer, nullable=False, server_default=text("0")),
    # How many times a Kombu consumer died holding the row (its lease lapsed
    # and was recovered); unlike ``deliveries``, rejects and requeues do not
    # count.  At ``worker_quarantine_after`` the message is QUARANTINED.
    Column("crashes", Integer, nullable=False, server_default=text("0")),
    # The whole Kombu message (Celery task protocol v2) as JSON.
    Column("message", Text, nullable=False),
    # The concurrency key when the default limit applies (one pending-or-
    # running job per key: the job's class keeps the default should_enqueue),
    # else NULL: a class that overrides should_enqueue sets its own limit
    # under the enqueue lock.  Always NULL or equal to concurrency_key.
    # Last, as migration 0004 added it: PostgreSQL's claims return ``r.*``
    # typed by position against these columns.
    Column("unique_key", String(255), nullable=True),
    Index(
        "ix_jobtable_request_claim",
        "queue",
        text("priority DESC"),
        "id",
        postgresql_where=text("state = 'pending'"),
        sqlite_where=text("state = 'pending'"),
    ).ddl_if(callable_=_has_partial_indexes),
    Index(
        "ix_jobtable_request_due",
        "run_at",
        postgresql_where=text("state = 'scheduled'"),
        sqlite_where=text("state = 'scheduled'"),
    ).ddl_if(callable_=_has_partial_indexes),
    Index(
        "ix_jobtable_request_running",
        "worker_id",
        postgresql_where=text("state = 'running'"),
        sqlite_where=text("state = 'running'"),
    ).ddl_if(callable_=_has_partial_indexes),
    # MySQL has no partial indexes: the same three lead with the state
    # instead, so a claim's range holds pending rows only and a million
    # scheduled jobs cost it nothing there either.
    Index("ix_jobtable_request_claim", "state", "queue", text("priority DESC"), "id").ddl_if(dialect="mysql"),
    Index("ix_jobtable_request_due", "state", "run_at").ddl_if(dialect="mysql"),
    Index("ix_jobtable_request_running", "state", "worker_id").ddl_if(dialect="mysql"),
    # The concurrency-key invariant: one pending-or-running job per key,
    # for the rows the default limit applies to (unique_key not NULL).
    Index(
        "uq_jobtable_request_unique_key",
        "task_name",
        "unique_key",
        unique=True,
        postgresql_where=text("unique_key IS NOT NULL"),
        sqlite_where=text("unique_key IS NOT NULL"),
    ),
    # The other keyed rows (classes with their own limit), which their
    # should_enqueue counts under the lock: together the two indexes find
    # every row of a key (reads_sql.key_filter) and each row is in one.
    Index(
        "ix_jobtable_request_custom_key",
        "task_name",
        "concurrency_key",
        postgresql_where=text("unique_key IS NULL AND concurrency_key IS NOT NULL"),
        sqlite_where=text("unique_key IS NULL AND concurrency_key IS NOT NULL"),
    ),
    # Lookups by task id are equality only (a uuid: refresh, cancels, the
    # dashboard, a retried publish's check): on PostgreSQL a hash index
    # serves them as fast as a B-tree and costs less per bulk-enqueued row
    # (bench/RESULTS.md, "The task_id index": migration 0008).
    Index("ix_jobtable_request_task_id", "task_id", postgresql_using="hash"),
)


result = Table(
    "jobtable_result",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("task_id", String(255), nullable=False),
    Column("task_name", String(255), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default=text("0")),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("retries", Integer, nullable=False, server_default=text("0")),
    Column("concurrency_key", String(255), nullable=True),
    Column("status", String(16), nullable=False),
    Column("requested_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("worker_id", String(255), nullable=True),
    Column("message", Text, nullable=True),
    Column("return_value", Text, nullable=True),
    Column("error_type", String(255), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    # True when this attempt was followed by another one: the retry is the
    # request or result with the same task_id and ``attempt + 1``.
    Column("retried", Boolean, nullable=False, server_default=text("false")),
    # Extra result-backend metadata (Celery), as JSON.
    Column("meta", Text, nullable=True),
    UniqueConstraint("task_id", "attempt"),
    Index("ix_jobtable_result_ended_at", "ended_at"),
    Index("ix_jobtable_result_status", "status", "ended_at"),
    Index("ix_jobtable_result_task_name", "task_name", "ended_at"),
    # Dashboard: the queue filter of the results list, and the "retried" count
    # (a small partial index: only attempts that were retried).
    Index("ix_jobtable_result_queue", "queue", "ended_at"),
    Index(
        "ix_jobtable_result_retried",
        "ended_at",
        postgresql_where=text("retried"),
        sqlite_where=text("retried"),
    ).ddl_if(callable_=_has_partial_indexes),
    Index("ix_jobtable_result_retried", "retried", "ended_at").ddl_if(dialect="mysql"),
)

#: Pre-aggregated result counts for the dashboard's overview, kept by the
#: database itself: triggers on ``jobtable_result`` (db/dialects.py) add every
#: inserted row, move updated ones and subtract deleted ones, so the table is
#: the aggregate of ``jobtable_result`` whoever writes it (native worker,
#: Celery result backend, CLI, dashboard, SQL by hand).  Rows are per
#: ``span``-second bucket (``STATS_SPANS``: fine buckets for the 1-hour
#: window, hourly ones for the longer windows), queue, status and ``shard``:
#: on PostgreSQL a transaction that writes results holds one of STATS_SHARDS
#: shards (an advisory lock) until it ends, so open transactions never write
#: the same row; readers sum the shards (a shard's own row may even be
#: negative after deletions).  SQLite's row triggers write only the finest
#: span; retention folds those rows into hourly ones once they are two hours
#: old, so an hour there is its hourly row plus its fine rows
#: (``dialects.stats_spans``, ``stats_read_spans``, ``compact_result_stats``).
STATS_SPANS = (30, 3600)
STATS_SHARDS = 8
#: Queue-wait classes (seconds): a successful attempt's wait (start minus
#: enqueue) is counted in the first class whose upper edge exceeds it; the
#: last class is open.  Each class keeps a count and a sum, so the dashboard
#: estimates the median wait as the mean of the class holding the median.
WAIT_EDGES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
WAIT_CLASSES = len(WAIT_EDGES) + 1
#: The counter columns, in the order the triggers write them.
STATS_COUNTERS = (
    "results",
    "retried",
    *(f"wait_count_{i}" for i in range(WAIT_CLASSES)),
    *(f"wait_sum_{i}" for i in range(WAIT_CLASSES)),
)

result_stats = Table(
    "jobtable_result_stats",
    metadata,
    # Bucket width in seconds (one of STATS_SPANS).
    Column("span", Integer, primary_key=True, autoincrement=False),
    # Bucket start in seconds since the Unix epoch (UTC), a multiple of span:
    # an integer computes the same way in both dialects' trigger SQL.
    Column("bucket_start", BigInteger, primary_key=True, autoincrement=False),
    Column("queue", String(255), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("shard", SmallInteger, primary_key=True, autoincrement=False),
    # Results that ended in the bucket, and those of them with retried = true.
    Column("results", BigInteger, nullable=False, server_default=text("0")),
    Column("retried", BigInteger, nullable=False, server_default=text("0")),
    *(Column(f"wait_count_{i}", BigInteger, nullable=False, server_default=text("0")) for i in range(WAIT_CLASSES)),
    *(Column(f"wait_sum_{i}", Float, nullable=False, server_default=text("0")) for i in range(WAIT_CLASSES)),
)

worker = Table(
    "jobtable_worker",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("kind", String(16), nullable=False),  # "native" or "kombu"
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Text, nullable=False),  # JSON list
    Column("processes", Integer, nullable=False, server_default=text("0")),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    # The request this member is running right now (NULL: none), carried by
    # the supervisor's heartbeat UPDATE: a `running` request is claimed, and
    # really started only when a live worker reports it here (migration 0006).
    Column("running_id", BigInteger, nullable=True),
    Index("ix_jobtable_worker_heartbeat_at", "heartbeat_at"),
)

schedule = Table(
    "jobtable_schedule",
    metadata,
    Column("name", String(255), primary_key=True),
    # The last slot enqueued; advanced by a conditional UPDATE so each slot
    # fires once across any number of workers.
    Column("last_slot", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Kombu exchange bindings, kept in the database so they hold across processes.
binding = Table(
    "jobtable_binding",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("exchange", String(255), nullable=False),
    Column("exchange_type", String(16), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("pattern", String(255), nullable=False, server_default=text("''")),
    Column("queue", String(255), nullable=False),
    # The queue's message TTL in seconds (AMQP ``x-message-ttl``; Celery sets
    # it on event, pidbox and reply queues): messages routed through this
    # binding expire after it, so a queue whose consumer is gone cannot grow.
    Column("message_ttl", Float, nullable=True),
    UniqueConstraint("exchange", "routing_key", "queue"),
)

# Celery groups and chords (result backend): a group's result tuple, and for a
# chord the counter its parts decrement in one statement -- no chord_unlock
# polling.
group = Table(
    "jobtable_group",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("result", Text, nullable=True),  # GroupResult.as_tuple() as JSON
    Column("chord_size", Integer, nullable=True),
    Column("chord_done", Integer, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_jobtable_group_created_at", "created_at"),
)

#: Revokes that last (Celery's ``app.control.revoke``, ``revoke_by_stamped_headers``,
#: the shim's and the dashboard's revoke), checked at every claim by the
#: native worker and the Kombu transport, so a worker started after the
#: revoke honours it too (Celery keeps them in each worker's memory).  A
#: ``task`` row names a task id (``name`` is ''); a ``stamp`` row a stamped
#: header ``name`` and one of its values; a ``terminate`` row asks the native
#: worker to stop the running attempt of a task id (``name``: that attempt's
#: number, or '' for any; db/cancels_sql.py) and is not checked at claims.
#: The key leads with ``value`` so the
#: claim's ``value IN (...)`` probe is one index lookup per claimed message.
REVOKE_TASK = "task"
REVOKE_STAMP = "stamp"
REVOKE_TERMINATE = "terminate"

revoke = Table(
    "jobtable_revoke",
    metadata,
    Column("value", String(255), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("name", String(255), primary_key=True, server_default=text("''")),
    # Celery forgets a revoke after REVOKE_EXPIRES (3 h); so does the check.
    Column("expires_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_jobtable_revoke_expires_at", "expires_at"),
)

#: PostgreSQL channel notified (by a statement-level trigger) whenever results
#: are written, so AsyncResult.get() waits without polling.
RESULT_CHANNEL = "jobtable_result"

#: Rate limits (``rate_limit="10/m"``) shared by every worker: one row per
#: limit key (a task name), ``taken_at`` when its last token was taken; the
#: next is due one interval later (a burst of one, as Celery's token bucket
#: of capacity 1).  A take is one conditional UPDATE (``db/ratelimit_sql.py``),
#: so the database decides who gets a token, whatever the number of workers
#: and hosts, and a changed limit applies from the next take.
rate_limit = Table(
    "jobtable_rate_limit",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("taken_at", UTCDateTime, nullable=False),
    # Set by Celery's remote control (``app.control.rate_limit``): tokens per
    # second that replace the code's limit on every worker, 0 for none;
    # NULL: the code's.
    Column("rate", Double, nullable=True),
)
