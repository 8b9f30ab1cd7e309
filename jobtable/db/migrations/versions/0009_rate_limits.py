"""Rate limits enforced by the database (jobtable_rate_limit): one row per
limit key (a task name) holding when its last token was taken, taken by a
conditional UPDATE so that every worker and host shares one limit.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

History, not live code: the DDL below is frozen as db/tables.py generated it
on 2026-12-07.  Never edit it; a change to the table is a new migration.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_POSTGRESQL_DDL = (
    "CREATE TABLE jobtable_rate_limit ("
    "name VARCHAR(255) NOT NULL, "
    "taken_at TIMESTAMP WITH TIME ZONE NOT NULL, "
    "CONSTRAINT pk_jobtable_rate_limit PRIMARY KEY (name))",
)
_SQLITE_DDL = (
    "CREATE TABLE jobtable_rate_limit ("
    "name VARCHAR(255) NOT NULL, "
    "taken_at DATETIME NOT NULL, "
    "CONSTRAINT pk_jobtable_rate_limit PRIMARY KEY (name))",
)
# MySQL commits each DDL statement: IF NOT EXISTS makes an interrupted
# upgrade finish when run again.  DATETIME(6) holding naive UTC, as elsewhere.
_MYSQL_DDL = (
    "CREATE TABLE IF NOT EXISTS jobtable_rate_limit ("
    "name VARCHAR(255) NOT NULL, "
    "taken_at DATETIME(6) NOT NULL, "
    "CONSTRAINT pk_jobtable_rate_limit PRIMARY KEY (name))",
)
_DDL = {"postgresql": _POSTGRESQL_DDL, "sqlite": _SQLITE_DDL, "mysql": _MYSQL_DDL}


def upgrade() -> None:
    name = op.get_bind().dialect.name
    if name not in _DDL:
        raise RuntimeError(f"Migration 0009 has no SQL for the {name} dialect.")
    for statement in _DDL[name]:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS jobtable_rate_limit")
