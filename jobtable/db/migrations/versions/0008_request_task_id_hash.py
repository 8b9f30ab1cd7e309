"""PostgreSQL: the request table's ``task_id`` index becomes a hash index.

Every lookup by task id is an equality (``JobRequest.refresh``, cancels, the
dashboard, a retried publish's "already written?" check with ``= ANY``): a
hash index serves them as fast as the B-tree did, and costs less per row a
bulk enqueue writes (bench/RESULTS.md, "The task_id index", session 14).
SQLite and MySQL/MariaDB keep their B-tree: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

History, not live code: never edit; a change to the index is a new migration.

The index is rebuilt in the migration's transaction: writes to
``jobtable_request`` wait for the build (about a second per million rows
on a small machine; a queue's table is usually small).  Stop enqueuers
first if yours is large.  Re-runnable: the DDL is transactional.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_INDEX = "ix_jobtable_request_task_id"


def upgrade() -> None:
    _rebuild("hash")


def downgrade() -> None:
    _rebuild("btree")


def _rebuild(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX IF EXISTS {_INDEX}")
    op.execute(f"CREATE INDEX {_INDEX} ON jobtable_request USING {method} (task_id)")
