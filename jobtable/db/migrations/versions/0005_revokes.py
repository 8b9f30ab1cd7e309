"""Revokes kept in the database (jobtable_revoke): task ids and stamped
headers revoked through Celery's remote control, the shim or the dashboard,
checked at every claim so that a worker started after the revoke honours it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

History, not live code: the DDL below is frozen as db/tables.py generated it
on 2026-12-03.  Never edit it; a change to the table is a new migration.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_POSTGRESQL_DDL = (
    "CREATE TABLE jobtable_revoke ("
    "value VARCHAR(255) NOT NULL, "
    "kind VARCHAR(16) NOT NULL, "
    "name VARCHAR(255) DEFAULT '' NOT NULL, "
    "expires_at TIMESTAMP WITH TIME ZONE NOT NULL, "
    "created_at TIMESTAMP WITH TIME ZONE NOT NULL, "
    "CONSTRAINT pk_jobtable_revoke PRIMARY KEY (value, kind, name))",
    "CREATE INDEX ix_jobtable_revoke_expires_at ON jobtable_revoke (expires_at)",
)
_SQLITE_DDL = (
    "CREATE TABLE jobtable_revoke ("
    "value VARCHAR(255) NOT NULL, "
    "kind VARCHAR(16) NOT NULL, "
    "name VARCHAR(255) DEFAULT '' NOT NULL, "
    "expires_at DATETIME NOT NULL, "
    "created_at DATETIME NOT NULL, "
    "CONSTRAINT pk_jobtable_revoke PRIMARY KEY (value, kind, name))",
    "CREATE INDEX ix_jobtable_revoke_expires_at ON jobtable_revoke (expires_at)",
)
# MySQL commits each DDL statement: IF NOT EXISTS makes an interrupted
# upgrade finish when run again.  Times are DATETIME(6) holding naive UTC, as
# in the other tables there.
_MYSQL_DDL = (
    "CREATE TABLE IF NOT EXISTS jobtable_revoke ("
    "value VARCHAR(255) NOT NULL, "
    "kind VARCHAR(16) NOT NULL, "
    "name VARCHAR(255) DEFAULT '' NOT NULL, "
    "expires_at DATETIME(6) NOT NULL, "
    "created_at DATETIME(6) NOT NULL, "
    "CONSTRAINT pk_jobtable_revoke PRIMARY KEY (value, kind, name), "
    "INDEX ix_jobtable_revoke_expires_at (expires_at))",
)
_DROP = ("DROP INDEX ix_jobtable_revoke_expires_at", "DROP TABLE jobtable_revoke")
_DDL = {"postgresql": _POSTGRESQL_DDL, "sqlite": _SQLITE_DDL, "mysql": _MYSQL_DDL}


def upgrade() -> None:
    name = op.get_bind().dialect.name
    if name not in _DDL:
        raise RuntimeError(f"Migration 0005 has no SQL for the {name} dialect.")
    for statement in _DDL[name]:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        op.execute("DROP TABLE IF EXISTS jobtable_revoke")  # its index goes with it
        return
    for statement in _DROP:
        op.execute(statement)
