"""A rate set by Celery's remote control (``app.control.rate_limit``) in
jobtable_rate_limit.rate: it replaces the code's rate_limit of that task
name on every worker from their next take.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08

History, not live code: the DDL below is frozen as db/tables.py generated it
on 2026-12-08.  Never edit it; a change to the table is a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# A nullable column without a default: an instant ALTER everywhere.
_POSTGRESQL_DDL = ("ALTER TABLE jobtable_rate_limit ADD COLUMN rate DOUBLE PRECISION",)
_SQLITE_DDL = ("ALTER TABLE jobtable_rate_limit ADD COLUMN rate DOUBLE",)
_MYSQL_DDL = ("ALTER TABLE jobtable_rate_limit ADD COLUMN rate DOUBLE",)
_DROP = ("ALTER TABLE jobtable_rate_limit DROP COLUMN rate",)


def upgrade() -> None:
    name = op.get_bind().dialect.name
    ddl = {"postgresql": _POSTGRESQL_DDL, "mysql": _MYSQL_DDL, "mariadb": _MYSQL_DDL}.get(name, _SQLITE_DDL)
    if name in ("mysql", "mariadb") and _has_column():
        return  # MySQL commits each DDL statement: an interrupted earlier run added it
    for statement in ddl:
        op.execute(statement)


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("jobtable_rate_limit")
    return "rate" in {c["name"] for c in columns}


def downgrade() -> None:
    for statement in _DROP:
        op.execute(statement)
