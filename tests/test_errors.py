"""Bad configuration gets a clear error naming the problem and the fix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import jobtable
from jobtable import settings
from jobtable.db import engine as db_engine
from jobtable.exceptions import ConfigurationError, DatabaseUnavailable, SchemaNotMigrated
from tests.conftest import PG_ADMIN_URL
from tests.sample_jobs import Echo


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    settings.reset()
    db_engine.reset_engines()
    yield
    settings.reset()
    db_engine.reset_engines()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL. Use postgresql\\+psycopg://"),
        ("mssql://root@localhost/db", "supports PostgreSQL, MySQL/MariaDB and SQLite, not 'mssql'"),
        ("mysql+aiomysql://root@localhost/db", "through mysqlclient \\(or PyMySQL\\), not 'aiomysql'"),
        ("postgresql+asyncpg://u@h/db", "through psycopg 3, not 'asyncpg'"),
        ("sqlite://", "not an in-memory database"),
        ("sqlite:////no/such/dir/x.db", "directory of the SQLite database .* does not exist"),
    ],
)
def test_malformed_urls(url: str, message: str) -> None:
    # Refused by configure() when it cannot be parsed, else at the first use.
    with pytest.raises(ConfigurationError, match=message):
        jobtable.configure(database_url=url)
        Echo().run_in_worker()


def test_password_is_not_shown() -> None:
    with pytest.raises(ConfigurationError) as info:
        jobtable.configure(database_url="mssql://user:s3cret@localhost/db")
    assert "s3cret" not in str(info.value) and "user:***@localhost" in str(info.value)


def test_unreachable_postgres() -> None:
    jobtable.configure(database_url="postgresql://postgres:pw@127.0.0.1:1/nothing")
    with pytest.raises(DatabaseUnavailable, match="Cannot connect to the jobtable database .*127.0.0.1:1.*Check that the server is running") as info:
        Echo().run_in_worker()
    assert "pw@" not in str(info.value)


def test_unmigrated_sqlite(tmp_path: Path) -> None:
    (tmp_path / "new.db").touch()  # an empty file (a missing one: tests/test_settings_validation.py)
    jobtable.configure(database_url=f"sqlite:///{tmp_path / 'new.db'}")
    with pytest.raises(SchemaNotMigrated, match="has no jobtable tables. Run `jobtable migrate`"):
        Echo().run_in_worker()


def test_unmigrated_postgres() -> None:
    name = f"jobtable_test_unmigrated_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    jobtable.configure(database_url=url)
    try:
        with pytest.raises(SchemaNotMigrated, match="Run `jobtable migrate`"):
            Echo().run_in_worker()
    finally:
        db_engine.reset_engines()


def test_postgres_scheme_means_psycopg3() -> None:
    assert db_engine.normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert db_engine.normalize_url("jobtable+postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert db_engine.normalize_url("jobtable+sqlite:///x.db").database == "x.db"
