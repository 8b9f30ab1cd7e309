"""The queue tables: requests, results, workers, schedules, bindings.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import TypedDict

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL's DATETIME keeps no fractions of a second unless told: DATETIME(6).
Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")

# MySQL (added with MySQL support, 2026-12-03): DDL is not transactional
# there -- each CREATE commits by itself -- so a run interrupted half way
# leaves some tables behind and no version row.  Every step below is skipped
# when what it creates exists already, so running `jobtable migrate` again
# finishes the job.  MySQL has no partial indexes: the partial ones lead with
# the column their predicate tests instead.


class _Where(TypedDict):
    """create_index() keywords of a partial index, typed per key so that mypy
    sees they fill none of its named parameters."""

    postgresql_where: sa.TextClause
    sqlite_where: sa.TextClause


def _partial(where: str) -> _Where:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def _mysql() -> bool:
    return op.get_bind().dialect.name == "mysql"


def _exists(table: str, index: str | None = None) -> bool:
    """On MySQL: whether an interrupted earlier run created it already."""
    if not _mysql():
        return False
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(table):
        return False
    return index is None or index in {i["name"] for i in inspector.get_indexes(table)}


def _create_table(name: str, *columns: sa.schema.SchemaItem) -> None:
    if not _exists(name):
        op.create_table(name, *columns)


def _create_index(
    name: str, table: str, columns: list[str | sa.TextClause], *, unique: bool = False, where: str | None = None
) -> None:
    if _exists(table, name):
        return
    if where is None:
        op.create_index(name, table, columns, unique=unique)
    elif _mysql():
        # The predicate's column first (state = ..., retried).
        lead = where.split()[0]
        op.create_index(name, table, [lead, *columns], unique=unique)
    else:
        op.create_index(name, table, columns, unique=unique, **_partial(where))


def upgrade() -> None:
    _create_table(
        "jobtable_request",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=True),
        sa.Column("concurrency_key", sa.String(255), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("retries", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", Timestamp, nullable=True),
        sa.Column("deliveries", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobtable_request"),
    )
    _create_index(
        "ix_jobtable_request_claim",
        "jobtable_request",
        ["queue", sa.text("priority DESC"), "id"],
        where="state = 'pending'",
    )
    _create_index("ix_jobtable_request_due", "jobtable_request", ["run_at"], where="state = 'scheduled'")
    _create_index("ix_jobtable_request_running", "jobtable_request", ["worker_id"], where="state = 'running'")
    # MySQL: a plain unique index -- NULL keys never collide in InnoDB's
    # unique indexes, which is what the partial index says elsewhere.
    _create_index(
        "uq_jobtable_request_concurrency",
        "jobtable_request",
        ["task_name", "concurrency_key"],
        unique=True,
        where=None if _mysql() else "concurrency_key IS NOT NULL",
    )
    _create_index("ix_jobtable_request_task_id", "jobtable_request", ["task_id"])

    _create_table(
        "jobtable_result",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("retries", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("concurrency_key", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", Timestamp, nullable=True),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("ended_at", Timestamp, nullable=False),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("return_value", sa.Text, nullable=True),
        sa.Column("error_type", sa.String(255), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("retried", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("meta", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobtable_result"),
        sa.UniqueConstraint("task_id", "attempt", name="uq_jobtable_result_task_id_attempt"),
    )
    _create_index("ix_jobtable_result_ended_at", "jobtable_result", ["ended_at"])
    _create_index("ix_jobtable_result_status", "jobtable_result", ["status", "ended_at"])
    _create_index("ix_jobtable_result_task_name", "jobtable_result", ["task_name", "ended_at"])
    # Dashboard: the queue filter of the results list, and the "retried" count.
    _create_index("ix_jobtable_result_queue", "jobtable_result", ["queue", "ended_at"])
    _create_index("ix_jobtable_result_retried", "jobtable_result", ["ended_at"], where="retried")

    _create_table(
        "jobtable_worker",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", sa.Text, nullable=False),
        sa.Column("processes", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("heartbeat_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobtable_worker"),
    )
    _create_index("ix_jobtable_worker_heartbeat_at", "jobtable_worker", ["heartbeat_at"])

    _create_table(
        "jobtable_schedule",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("last_slot", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_jobtable_schedule"),
    )

    _create_table(
        "jobtable_binding",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("exchange", sa.String(255), nullable=False),
        sa.Column("exchange_type", sa.String(16), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("pattern", sa.String(255), nullable=False, server_default=sa.text("''")),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("message_ttl", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobtable_binding"),
        sa.UniqueConstraint("exchange", "routing_key", "queue", name="uq_jobtable_binding_exchange_routing_key_queue"),
    )

    _create_table(
        "jobtable_group",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("chord_size", sa.Integer, nullable=True),
        sa.Column("chord_done", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobtable_group"),
    )
    _create_index("ix_jobtable_group_created_at", "jobtable_group", ["created_at"])

    if op.get_bind().dialect.name == "postgresql":
        # One NOTIFY per statement that writes results (not per row): waiters
        # in AsyncResult.get() re-read their own ids.
        op.execute(
            """
            CREATE FUNCTION jobtable_result_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('jobtable_result', '');
                RETURN NULL;
            END $$
            """
        )
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER jobtable_result_notify_{event.lower()} AFTER {event} ON jobtable_result "
                "FOR EACH STATEMENT EXECUTE FUNCTION jobtable_result_notify()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobtable_result_notify_insert ON jobtable_result")
        op.execute("DROP TRIGGER IF EXISTS jobtable_result_notify_update ON jobtable_result")
        op.execute("DROP FUNCTION IF EXISTS jobtable_result_notify()")
    op.drop_table("jobtable_group")
    for table in ("jobtable_binding", "jobtable_schedule", "jobtable_worker", "jobtable_result", "jobtable_request"):
        op.drop_table(table)
