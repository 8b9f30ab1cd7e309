"""The Alembic migrations and db/tables.py describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from jobtable.db import migrate
from jobtable.db.engine import get_engine
from jobtable.db.tables import metadata


def _compared(dialect: str, name: str | None, type_: str) -> bool:
    if type_ == "table":
        # Only jobtable's tables; its version table is Alembic's own.
        return bool(name) and name.startswith("jobtable_") and name != migrate.VERSION_TABLE
    # Alembic cannot reflect SQLite expression indexes (priority DESC) to compare them.
    return not (dialect == "sqlite" and name == "ix_jobtable_request_claim")


def test_migrated_schema_matches_tables(db_url: str) -> None:
    with get_engine().connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                # Only jobtable's tables; its version table is Alembic's own.
                "include_name": lambda name, type_, parent: _compared(conn.dialect.name, name, type_),
            },
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_head_is_current(db_url: str) -> None:
    with get_engine().connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_downgrade_and_upgrade_again(tmp_path) -> None:
    from jobtable.db.engine import create_jobtable_engine

    engine = create_jobtable_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert migrate.upgrade(engine) == (None, migrate.head_revision())
    migrate.downgrade(engine, "base")
    with engine.connect() as conn:
        assert migrate.current_revision(conn) is None
    assert migrate.upgrade(engine)[1] == migrate.head_revision()
