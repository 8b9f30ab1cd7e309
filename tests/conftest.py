"""Fixtures: a real SQLite file and a real PostgreSQL database per test process.

PostgreSQL is reached at JOBTABLE_TEST_PG_URL (default: the local server with
trust auth).  Each pytest-xdist worker gets its own database, created fresh at
the start of the session; tests empty the tables instead of recreating them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

import jobtable
from jobtable import settings
from jobtable.db import engine as db_engine
from jobtable.db import migrate
from jobtable.db.tables import metadata

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("JOBTABLE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DIALECTS = ["sqlite", "postgresql"]


def _worker_name(request: pytest.FixtureRequest) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


def _drop_stale_databases(conn: Any) -> None:
    """Drop test databases whose test process is gone (a run that was killed)."""
    names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'jobtable_test_%'")).scalars()
    for name in names:
        pid = name.rsplit("_", 1)[-1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fresh_pg_database(request: pytest.FixtureRequest, prefix: str = "jobtable_test") -> Iterator[str]:
    """A migrated PostgreSQL database for one test process, dropped at the end.

    The pid in the name keeps concurrent test runs on one server apart; the
    prefix keeps two directories' session fixtures in one run apart.
    """
    name = f"{prefix}_{_worker_name(request)}_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        _drop_stale_databases(conn)
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(db_engine.create_jobtable_engine(url))
    yield url
    db_engine.reset_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from fresh_pg_database(request)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "jobtable.sqlite3"
    url = f"sqlite:///{path}"
    migrate.upgrade(db_engine.create_jobtable_engine(url))
    return url


def _sessions_of(url: str) -> list[tuple[Any, ...]]:
    """Other sessions on the database of ``url``: who holds what, for errors."""
    admin_engine = create_engine(PG_ADMIN_URL)
    with admin_engine.connect() as admin:
        rows = admin.execute(
            text(
                "SELECT pid, application_name, state, xact_start, left(query, 200) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": make_url(url).database},
        )
        found = [tuple(row) for row in rows]
    admin_engine.dispose()
    return found


def empty_tables(url: str) -> None:
    engine = db_engine.get_engine(url)
    # The stats table last: on SQLite, deleting results runs the triggers
    # that subtract them from it.
    names = sorted((t.name for t in reversed(metadata.sorted_tables)), key=lambda n: n == "jobtable_result_stats")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # A connection an earlier test left inside a transaction (a
            # leaked worker, an unclosed read) would block TRUNCATE until
            # pytest-timeout fires with no clue: fail fast, naming it.
            conn.execute(text("SET LOCAL lock_timeout = '30s'"))
            try:
                conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY"))
            except OperationalError as exc:
                raise RuntimeError(
                    "empty_tables: TRUNCATE waited 30 s for a lock; sessions of this database: "
                    + repr(_sessions_of(url))
                ) from exc
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture(autouse=True)
def _restore_jobtable_environment() -> Iterator[None]:
    """A test that points JOBTABLE_* variables elsewhere must not leak them:
    the environment wins over configure(), so the next test would silently
    use another database."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("JOBTABLE_")}
    yield
    for key in [k for k in os.environ if k.startswith("JOBTABLE_")]:
        if key not in saved:
            del os.environ[key]
    os.environ.update(saved)
    settings.reset()


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(dialect: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty, migrated jobtable database, configured as the default."""
    url = request.getfixturevalue("pg_url" if dialect == "postgresql" else "sqlite_url")
    empty_tables(url)
    settings.reset()
    jobtable.configure(database_url=url)
    yield url
    settings.reset()
    db_engine.reset_engines()


@pytest.fixture
def subprocess_env(db_url: str) -> dict[str, str]:
    """Environment for child processes: same database, tests importable."""
    env = dict(os.environ)
    env["JOBTABLE_DATABASE_URL"] = db_url
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
