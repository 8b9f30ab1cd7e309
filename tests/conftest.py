"""Fixtures: a real SQLite file, a real PostgreSQL and a real MariaDB/MySQL
database per test process.

PostgreSQL is reached at JOBTABLE_TEST_PG_URL (default: the local server with
trust auth), MySQL at JOBTABLE_TEST_MYSQL_URL (default: the local MariaDB,
root without a password).  Each pytest-xdist worker gets its own database,
created fresh at the start of the session; tests empty the tables instead of
recreating them.

``dialect`` runs a test on SQLite and PostgreSQL; a module whose tests also
pass on MySQL opts in with ``pytestmark = pytest.mark.dialects(*ALL_DIALECTS)``
(MySQL is being brought to every door, issue 17: the modules not marked yet
are those it does not serve yet).
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
MYSQL_ADMIN_URL = os.environ.get("JOBTABLE_TEST_MYSQL_URL", "mysql+mysqldb://root@127.0.0.1:3306/mysql")
#: The dialects of modules without a marker.  JOBTABLE_TEST_DIALECTS=mysql
#: tries a module on MySQL before it opts in.
DIALECTS = os.environ.get("JOBTABLE_TEST_DIALECTS", "sqlite,postgresql").split(",")
ALL_DIALECTS = ["sqlite", "postgresql", "mysql"]
#: A worker test of the representative set that also runs behind a real
#: PgBouncer in transaction mode (the "pgbouncer" dialect, issue 18).
BEHIND_PGBOUNCER = pytest.mark.behind_pgbouncer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dialects(*names): the dialects a module's `dialect` fixture runs over")
    config.addinivalue_line("markers", "behind_pgbouncer: run the test on the 'pgbouncer' dialect too")


def _parametrizes_dialect(metafunc: pytest.Metafunc) -> bool:
    """A test that names its dialects itself (parametrize("dialect", ...))."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        if "dialect" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `dialect` is parametrized here rather than by fixture params, so that a
    # module's marker can widen it to MySQL.
    if "dialect" in metafunc.fixturenames and not _parametrizes_dialect(metafunc):
        marker = metafunc.definition.get_closest_marker("dialects")
        names = list(marker.args) if marker is not None else list(DIALECTS)
        if metafunc.definition.get_closest_marker("behind_pgbouncer") is not None:
            names.append("pgbouncer")
        metafunc.parametrize("dialect", names, indirect=True)


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


def _drop_stale_mysql_databases(conn: Any) -> None:
    """Drop MySQL test databases whose test process is gone."""
    for name in conn.execute(text("SHOW DATABASES LIKE 'jobtable\\_test\\_%'")).scalars():
        pid = name.rsplit("_", 1)[-1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))


def fresh_mysql_database(request: pytest.FixtureRequest, prefix: str = "jobtable_test", migrated: bool = True) -> Iterator[str]:
    """A migrated MySQL database for one test process, dropped at the end (as
    ``fresh_pg_database``)."""
    name = f"{prefix}_{_worker_name(request)}_{os.getpid()}"
    admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        _drop_stale_mysql_databases(conn)
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = make_url(MYSQL_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    if migrated:
        migrate.upgrade(db_engine.create_jobtable_engine(url))
    yield url
    db_engine.reset_engines()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="session")
def mysql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from fresh_mysql_database(request)


@pytest.fixture(scope="session")
def pgbouncer_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The "pgbouncer" dialect: a PostgreSQL database reached through a real
    PgBouncer in transaction mode (tests/pgbouncer.py); the direct URL beside
    it (``database_direct_url``) is in ``DIRECT_URLS``."""
    from tests.pgbouncer import PgBouncer

    bouncer = PgBouncer().start()
    try:
        for direct in fresh_pg_database(request, prefix="jobtable_test_pgb"):
            url = bouncer.url(make_url(direct).database or "")
            # Named, so that the tests can count the direct sessions.
            DIRECT_URLS[url] = direct + "?application_name=jobtable-direct"
            BOUNCERS[url] = bouncer
            yield url
            # The database is dropped next: PgBouncer's server connections first.
            bouncer.stop()
    finally:
        bouncer.stop()


#: The pooled URL of the "pgbouncer" dialect -> the direct one, its PgBouncer.
DIRECT_URLS: dict[str, str] = {}
BOUNCERS: dict[str, Any] = {}
#: What a test of the "pgbouncer" dialect configures beside its URL.
POOLER = "transaction"

_URL_FIXTURES = {"postgresql": "pg_url", "sqlite": "sqlite_url", "mysql": "mysql_url", "pgbouncer": "pgbouncer_url"}


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
        elif conn.dialect.name == "mysql":
            # DELETE, not TRUNCATE (which commits by itself and skips the
            # stats triggers, whose rows are then deleted last).
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))
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


@pytest.fixture(autouse=True)
def _shim_current_app(request: pytest.FixtureRequest) -> Iterator[None]:
    """``@shared_task`` tasks use the current app, and importing any test app
    module makes its app current -- so which one is current would depend on
    the order xdist collects modules.  A test module that uses the tasks of
    tests/shim_tasks.py gets that module's app; every test gets back the app
    that was current before it."""
    from jobtable.shim import current

    saved = current._current
    shim_tasks = sys.modules.get("tests.shim_tasks")
    if shim_tasks is not None and any(value is shim_tasks for value in vars(request.module).values()):
        shim_tasks.app.set_current()
    yield
    current._current = saved


@pytest.fixture
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(dialect: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty, migrated jobtable database, configured as the default."""
    url = request.getfixturevalue(_URL_FIXTURES[dialect])
    settings.reset()
    if dialect == "pgbouncer":
        jobtable.configure(database_url=url, database_pooler=POOLER, database_direct_url=DIRECT_URLS[url])
    else:
        jobtable.configure(database_url=url)
    empty_tables(url)
    yield url
    settings.reset()
    db_engine.reset_engines()


@pytest.fixture
def subprocess_env(db_url: str) -> dict[str, str]:
    """Environment for child processes: same database, tests importable."""
    env = dict(os.environ)
    env["JOBTABLE_DATABASE_URL"] = db_url
    if db_url in DIRECT_URLS:  # behind PgBouncer
        env["JOBTABLE_DATABASE_POOLER"] = POOLER
        env["JOBTABLE_DATABASE_DIRECT_URL"] = DIRECT_URLS[db_url]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
