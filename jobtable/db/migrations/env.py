"""Alembic environment: always run by jobtable.db.migrate with a connection."""

from __future__ import annotations

from alembic import context

from jobtable.db.migrate import VERSION_TABLE
from jobtable.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run jobtable's migrations with `jobtable migrate`, not the alembic command.")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    # jobtable migrate's per-revision progress (db/migrate.upgrade).
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
