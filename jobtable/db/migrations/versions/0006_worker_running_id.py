"""The request each worker member is running right now
(jobtable_worker.running_id), written by the supervisor's heartbeat: a
``running`` request counts as running only once a live worker reports it
started; before that it is "claimed" (fetched in a batch, not yet begun).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

History, not live code: the DDL below is frozen as db/tables.py generated it
on 2026-12-03.  Never edit it; a change to the table is a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A nullable column without a default: an instant ALTER on PostgreSQL and
# MySQL/MariaDB, a plain ADD COLUMN on SQLite; the same text on all three.
_POSTGRESQL_DDL = ("ALTER TABLE jobtable_worker ADD COLUMN running_id BIGINT",)
_SQLITE_DDL = ("ALTER TABLE jobtable_worker ADD COLUMN running_id BIGINT",)
_MYSQL_DDL = ("ALTER TABLE jobtable_worker ADD COLUMN running_id BIGINT",)
_DROP = ("ALTER TABLE jobtable_worker DROP COLUMN running_id",)


def upgrade() -> None:
    name = op.get_bind().dialect.name
    ddl = {"postgresql": _POSTGRESQL_DDL, "mysql": _MYSQL_DDL, "mariadb": _MYSQL_DDL}.get(name, _SQLITE_DDL)
    if name in ("mysql", "mariadb") and _has_column():
        return  # MySQL commits each DDL statement: an interrupted earlier run added it
    for statement in ddl:
        op.execute(statement)


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("jobtable_worker")
    return "running_id" in {c["name"] for c in columns}


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place (no table rebuild).
    for statement in _DROP:
        op.execute(statement)
