"""Limits per concurrency key set by the job class (issue 16): the unique
index moves from ``concurrency_key`` to a new column ``unique_key``, which is
the key for jobs under the default limit (one pending-or-running job per
key) and NULL for jobs whose class overrides ``should_enqueue``; a second,
non-unique partial index finds the latter by key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

History, not live code: the DDL is written out per dialect as db/tables.py
generated it on 2026-12-03.  Never edit it; a change is a new migration.
Every row already in the table was enqueued under the default limit (no
other existed), so the backfill copies its key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_UPGRADE = {
    # Same statements on both; PostgreSQL adds a NULL column without a rewrite.
    "postgresql": [
        "ALTER TABLE jobtable_request ADD COLUMN unique_key VARCHAR(255)",
        "UPDATE jobtable_request SET unique_key = concurrency_key WHERE concurrency_key IS NOT NULL",
        "CREATE UNIQUE INDEX uq_jobtable_request_unique_key ON jobtable_request (task_name, unique_key) "
        "WHERE unique_key IS NOT NULL",
        "CREATE INDEX ix_jobtable_request_custom_key ON jobtable_request (task_name, concurrency_key) "
        "WHERE unique_key IS NULL AND concurrency_key IS NOT NULL",
        "DROP INDEX uq_jobtable_request_concurrency",
    ],
    # SQLite keeps each CREATE INDEX as written: these are tables.py's, verbatim.
    "sqlite": [
        "ALTER TABLE jobtable_request ADD COLUMN unique_key VARCHAR(255)",
        "UPDATE jobtable_request SET unique_key = concurrency_key WHERE concurrency_key IS NOT NULL",
        "CREATE UNIQUE INDEX uq_jobtable_request_unique_key ON jobtable_request (task_name, unique_key) "
        "WHERE unique_key IS NOT NULL",
        "CREATE INDEX ix_jobtable_request_custom_key ON jobtable_request (task_name, concurrency_key) "
        "WHERE unique_key IS NULL AND concurrency_key IS NOT NULL",
        "DROP INDEX uq_jobtable_request_concurrency",
    ],
    # MySQL has no partial indexes (NULL keys never collide in a unique
    # index, and finished rows leave the table) and no transactional DDL:
    # _mysql_upgrade runs each statement only if its effect is missing, so an
    # interrupted upgrade is finished by running it again.
    "mysql": [
        "ALTER TABLE jobtable_request ADD COLUMN unique_key VARCHAR(255)",
        "UPDATE jobtable_request SET unique_key = concurrency_key WHERE concurrency_key IS NOT NULL",
        "CREATE UNIQUE INDEX uq_jobtable_request_unique_key ON jobtable_request (task_name, unique_key)",
        "CREATE INDEX ix_jobtable_request_custom_key ON jobtable_request (task_name, concurrency_key)",
        "DROP INDEX uq_jobtable_request_concurrency ON jobtable_request",
    ],
}

_DOWNGRADE = {
    "postgresql": [
        "DROP INDEX ix_jobtable_request_custom_key",
        "DROP INDEX uq_jobtable_request_unique_key",
        "CREATE UNIQUE INDEX uq_jobtable_request_concurrency ON jobtable_request (task_name, concurrency_key) "
        "WHERE concurrency_key IS NOT NULL",
        "ALTER TABLE jobtable_request DROP COLUMN unique_key",
    ],
    # SQLite (>= 3.35) drops a column no index uses: the indexes go first.
    "sqlite": [
        "DROP INDEX ix_jobtable_request_custom_key",
        "DROP INDEX uq_jobtable_request_unique_key",
        "CREATE UNIQUE INDEX uq_jobtable_request_concurrency ON jobtable_request (task_name, concurrency_key) "
        "WHERE concurrency_key IS NOT NULL",
        "ALTER TABLE jobtable_request DROP COLUMN unique_key",
    ],
    "mysql": [
        "DROP INDEX ix_jobtable_request_custom_key ON jobtable_request",
        "DROP INDEX uq_jobtable_request_unique_key ON jobtable_request",
        "CREATE UNIQUE INDEX uq_jobtable_request_concurrency ON jobtable_request (task_name, concurrency_key)",
        "ALTER TABLE jobtable_request DROP COLUMN unique_key",
    ],
}


def _statements(plan: dict[str, list[str]]) -> list[str]:
    name = op.get_bind().dialect.name
    if name not in plan:
        raise RuntimeError(f"Migration 0004 has no SQL for the {name} dialect.")
    return plan[name]


def _mysql_done(statement: str) -> bool:
    """Whether a MySQL statement of this migration has already taken effect
    (an earlier run stopped half way: MySQL commits each DDL statement)."""
    inspector = sa.inspect(op.get_bind())
    columns = {c["name"] for c in inspector.get_columns("jobtable_request")}
    indexes = {i["name"] for i in inspector.get_indexes("jobtable_request")}
    words = statement.split()
    if words[:2] == ["ALTER", "TABLE"]:
        return ("unique_key" in columns) == (words[3] == "ADD")
    if words[0] == "CREATE":
        return words[3 if words[1] == "UNIQUE" else 2] in indexes
    if words[0] == "DROP":
        return words[2] not in indexes
    return False  # the backfill: idempotent, run again


def upgrade() -> None:
    mysql = op.get_bind().dialect.name == "mysql"
    for statement in _statements(_UPGRADE):
        if not (mysql and _mysql_done(statement)):
            op.execute(sa.text(statement))


def downgrade() -> None:
    # The old index allows one job per key: refuse, saying why, while jobs of
    # classes with their own limit share one (finish or delete them first).
    shared = op.get_bind().execute(
        sa.text(
            "SELECT task_name, concurrency_key FROM jobtable_request WHERE concurrency_key IS NOT NULL "
            "GROUP BY task_name, concurrency_key HAVING count(*) > 1"
        )
    ).first()
    if shared is not None:
        raise RuntimeError(
            f"Cannot downgrade below 0004: several waiting or running jobs of {shared[0]} share the "
            f"concurrency key {shared[1]!r}, which the older schema forbids. Let them finish or delete them first."
        )
    mysql = op.get_bind().dialect.name == "mysql"
    for statement in _statements(_DOWNGRADE):
        if not (mysql and _mysql_done(statement)):
            op.execute(sa.text(statement))
