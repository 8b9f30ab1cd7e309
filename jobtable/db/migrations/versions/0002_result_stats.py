"""Pre-aggregated result counts for the dashboard (jobtable_result_stats),
kept by triggers on jobtable_result, and filled from the existing results.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from jobtable.db import dialects
from jobtable.db.tables import WAIT_CLASSES

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobtable_result_stats",
        sa.Column("span", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("bucket_start", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("shard", sa.SmallInteger, nullable=False, autoincrement=False),
        sa.Column("results", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("retried", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        *(
            sa.Column(f"wait_count_{i}", sa.BigInteger, nullable=False, server_default=sa.text("0"))
            for i in range(WAIT_CLASSES)
        ),
        *(sa.Column(f"wait_sum_{i}", sa.Float, nullable=False, server_default=sa.text("0")) for i in range(WAIT_CLASSES)),
        sa.PrimaryKeyConstraint("span", "bucket_start", "queue", "status", "shard", name="pk_jobtable_result_stats"),
    )
    name = op.get_bind().dialect.name
    # Creating the triggers locks jobtable_result against writes until this
    # transaction commits, so the backfill below and the triggers together
    # count every result exactly once, even with workers running.
    for statement in dialects.result_stats_ddl(name):
        op.execute(statement)
    op.execute(dialects.result_stats_backfill(name))
    # SQLite's backfill writes 30-second rows only (as its triggers do): fold
    # the old ones into hours now rather than at the first retention run.
    dialects.compact_result_stats(op.get_bind(), datetime.now(timezone.utc))


def downgrade() -> None:
    for statement in dialects.drop_result_stats_ddl(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("jobtable_result_stats")
