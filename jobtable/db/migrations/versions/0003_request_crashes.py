"""Count crash recoveries of transport messages (jobtable_request.crashes),
apart from ``deliveries``, so a message whose consumer keeps dying while
holding it can be quarantined.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "mysql" and "crashes" in {c["name"] for c in sa.inspect(bind).get_columns("jobtable_request")}:
        # MySQL's DDL commits by itself: a run interrupted after the ALTER
        # and before the version row is finished by running it again.
        return
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "jobtable_request",
        sa.Column("crashes", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN on both (SQLite >= 3.35): no table
    # rebuild, so the partial indexes stay as they are.
    op.drop_column("jobtable_request", "crashes")
