"""What a PostgreSQL restart does to a client: every client backend of the
test database ended (``pg_terminate_backend``), the caller's own session
and other databases' untouched."""

from __future__ import annotations

from sqlalchemy import create_engine, text


def terminate_clients(db_url: str) -> int:
    """End every client backend of ``db_url``'s database but the admin's own; how many."""
    admin = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'"
                    )
                ).scalar_one()
            )
    finally:
        admin.dispose()
