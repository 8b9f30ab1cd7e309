"""The Alembic migrations and db/tables.py describe the same schema."""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from jobtable.db import dialects, migrate
from jobtable.db.engine import create_jobtable_engine, get_engine
from jobtable.db.tables import metadata
from jobtable.db.types import UTCDateTime

from tests.conftest import ALL_DIALECTS, MYSQL_ADMIN_URL, PG_ADMIN_URL

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


#: Indexes declared twice in tables.py (a partial form, a MySQL form).
MYSQL_FORMS = {
    "ix_jobtable_request_claim", "ix_jobtable_request_due", "ix_jobtable_request_running", "ix_jobtable_result_retried"
}


def _declared_for(obj: Any, dialect: str) -> bool:
    """Alembic ignores ddl_if: of an index declared in two forms, only the
    one this dialect creates is compared (the partial one has a predicate)."""
    if isinstance(obj, sa.Index) and obj.name in MYSQL_FORMS:
        partial = obj.dialect_options["postgresql"]["where"] is not None
        return partial != (dialect == "mysql")
    return True


def _compared(dialect: str, name: str | None, type_: str) -> bool:
    if type_ == "table":
        # Only jobtable's tables; its version table is Alembic's own.
        return bool(name) and name.startswith("jobtable_") and name != migrate.VERSION_TABLE
    # Alembic cannot reflect SQLite expression indexes (priority DESC) to
    # compare them, nor tell MySQL's index forms from the partial ones
    # declared beside them (ddl_if): _schema_objects compares those.
    if dialect == "mysql" and name in MYSQL_FORMS:
        return False
    return not (dialect == "sqlite" and name == "ix_jobtable_request_claim")


def test_migrated_schema_matches_tables(db_url: str) -> None:
    with get_engine().connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                # Only jobtable's tables; its version table is Alembic's own.
                "include_name": lambda name, type_, parent: _compared(conn.dialect.name, name, type_),
                "include_object": lambda obj, name, type_, reflected, other: _compared(conn.dialect.name, name, type_)
                and _declared_for(obj, conn.dialect.name),
            },
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_head_is_current(db_url: str) -> None:
    with get_engine().connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_downgrade_and_upgrade_again(tmp_path) -> None:
    engine = create_jobtable_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert migrate.upgrade(engine) == (None, migrate.head_revision())
    migrate.downgrade(engine, "base")
    with engine.connect() as conn:
        assert migrate.current_revision(conn) is None
    assert migrate.upgrade(engine)[1] == migrate.head_revision()


# -- history: an old database upgraded is a new database --------------------
#
# Each test below builds its own databases from nothing (not the session's
# migrated one): one stepped up from 0001 with rows in it, one created at
# head, one created from db/tables.py.


@pytest.fixture
def new_database(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Makes empty databases of the test's dialect; drops them at the end."""
    created: list[tuple[Engine, str | None]] = []
    admin_url = {"postgresql": PG_ADMIN_URL, "mysql": MYSQL_ADMIN_URL}.get(dialect)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT") if admin_url else None
    quote = "`" if dialect == "mysql" else '"'

    def make() -> Engine:
        n = len(created)
        if admin is None:
            engine = create_jobtable_engine(f"sqlite:///{tmp_path / f'history{n}.sqlite3'}")
            created.append((engine, None))
            return engine
        worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
        # The pid last: conftest drops databases of dead test processes by it.
        name = f"jobtable_test_history{n}_{worker}_{os.getpid()}"
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}"))
            conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
        assert admin_url is not None
        engine = create_jobtable_engine(make_url(admin_url).set(database=name))
        created.append((engine, name))
        return engine

    yield make
    for engine, name in created:
        engine.dispose()
        if admin is not None:
            force = "" if dialect == "mysql" else " WITH (FORCE)"
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
    if admin is not None:
        admin.dispose()


def _revisions() -> list[str]:
    """Every revision, oldest first."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()
    return [script.revision for script in reversed(list(scripts))]


def _schema_objects(conn: Connection) -> dict[str, Any]:
    """Tables (columns with type, nullability and default; keys), indexes
    (their full definition: columns, order, uniqueness, partial predicate)
    and triggers with their functions, as the database reports them."""
    inspector = sa.inspect(conn)
    names = sorted(n for n in inspector.get_table_names() if n.startswith("jobtable_") and n != migrate.VERSION_TABLE)
    tables: dict[str, Any] = {}
    for name in names:
        tables[name] = {
            # By name: a column added by a later migration comes last in the
            # table, wherever tables.py lists it.
            "columns": {
                c["name"]: (c["type"].compile(dialect=conn.dialect), c["nullable"], c["default"])
                for c in inspector.get_columns(name)
            },
            "primary key": inspector.get_pk_constraint(name),
            "unique": sorted((u["name"] or "", tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)),
        }
    if conn.dialect.name == "mysql":
        # Each index as its columns in order, with direction and uniqueness.
        rows = conn.execute(
            text(
                "SELECT index_name, seq_in_index, column_name, collation, non_unique FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() AND table_name LIKE 'jobtable\\_%' AND table_name <> :version "
                "ORDER BY table_name, index_name, seq_in_index"
            ),
            {"version": migrate.VERSION_TABLE},
        )
        described: dict[str, list[str]] = {}
        for name, _seq, column, collation, non_unique in rows:
            described.setdefault(name, ["UNIQUE" if not non_unique else "INDEX"]).append(f"{column} {collation}")
        indexes = [(name, " ".join(parts)) for name, parts in described.items() if name != "PRIMARY"]
    elif conn.dialect.name == "postgresql":
        indexes = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename LIKE 'jobtable\\_%' AND tablename <> :version"
            ),
            {"version": migrate.VERSION_TABLE},
        )
    else:
        # SQLite keeps each index's CREATE statement as written; its
        # automatic indexes (of UNIQUE constraints) are compared above.
        indexes = conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                "AND tbl_name LIKE 'jobtable%' AND tbl_name <> :version"
            ),
            {"version": migrate.VERSION_TABLE},
        )
    return {"tables": tables, "indexes": dict(sorted((name, sql) for name, sql in indexes)), "triggers": _triggers(conn)}


def _triggers(conn: Connection) -> dict[str, str]:
    if conn.dialect.name == "mysql":
        triggers = conn.execute(
            text(
                "SELECT trigger_name, CONCAT(action_timing, ' ', event_manipulation, ' ON ', event_object_table, "
                "' ', action_statement) FROM information_schema.triggers WHERE trigger_schema = DATABASE()"
            )
        )
        return dict(sorted((name, sql) for name, sql in triggers))
    if conn.dialect.name == "postgresql":
        triggers = conn.execute(
            text(
                "SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
            )
        )
        functions = conn.execute(
            text(
                "SELECT 'function ' || proname, pg_get_functiondef(oid) FROM pg_proc "
                "WHERE pronamespace = current_schema()::regnamespace AND proname LIKE 'jobtable\\_%'"
            )
        )
        return dict(sorted((name, sql) for name, sql in [*triggers, *functions]))
    triggers = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    return dict(sorted((name, sql) for name, sql in triggers))


_UTC = UTCDateTime()


def _add_0001_rows(engine: Engine, now: datetime) -> None:
    """Rows as jobtable wrote them at revision 0001 (its columns only)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, created_at, "
                "attempt, retries, deliveries, message) "
                "VALUES ('t-pending', 'app.job', 'default', 3, 'pending', :now, :now, 1, 2, 0, '{}')"
            ).bindparams(sa.bindparam("now", type_=_UTC)),
            {"now": now},
        )
        result = text(
            "INSERT INTO jobtable_result (task_id, task_name, queue, priority, attempt, retries, status, "
            "requested_at, started_at, ended_at, retried) "
            "VALUES (:task_id, 'app.job', 'default', 0, 1, 0, :status, :requested, :started, :ended, :retried)"
        ).bindparams(*(sa.bindparam(name, type_=_UTC) for name in ("requested", "started", "ended")))
        # Five hours old (SQLite's migration folds its stats into the hour at
        # once), and a minute old: a successful attempt that waited 0.5 s.
        old = now - timedelta(hours=5)
        conn.execute(
            result,
            {"task_id": "t-old", "status": "ERRORED", "requested": old, "started": old, "ended": old, "retried": True},
        )
        recent = now - timedelta(minutes=1)
        conn.execute(
            result,
            {
                "task_id": "t-recent",
                "status": "SUCCESSFUL",
                "requested": recent - timedelta(seconds=0.5),
                "started": recent,
                "ended": recent + timedelta(seconds=1),
                "retried": False,
            },
        )


def test_old_database_upgraded_step_by_step_equals_a_new_one(dialect: str, new_database: Callable[[], Engine]) -> None:
    revisions = _revisions()
    assert revisions[0] == "0001" and revisions[-1] == migrate.head_revision()
    old = new_database()
    assert migrate.upgrade(old, revisions[0]) == (None, revisions[0])
    now = datetime.now(timezone.utc)
    _add_0001_rows(old, now)
    for before, after in zip(revisions, revisions[1:]):
        assert migrate.upgrade(old, after) == (before, after)
    new = new_database()
    assert migrate.upgrade(new) == (None, migrate.head_revision())

    with old.connect() as conn_old, new.connect() as conn_new:
        upgraded, created = _schema_objects(conn_old), _schema_objects(conn_new)
        assert upgraded["tables"] == created["tables"]
        assert upgraded["indexes"] == created["indexes"]
        assert upgraded["triggers"] == created["triggers"]
        assert set(created["triggers"]) >= {f"jobtable_result_stats_{op}" for op in ("insert", "update", "delete")}
        if dialect == "postgresql":
            # Partial indexes kept their predicates.
            assert "WHERE ((state)::text = 'pending'::text)" in created["indexes"]["ix_jobtable_request_claim"]
        if dialect == "mysql":
            # No partial indexes: the state leads the claim index.
            assert created["indexes"]["ix_jobtable_request_claim"] == "INDEX state A queue A priority D id A"

        # The old rows came through: the request got the later columns'
        # defaults, and 0002 counted the results (the backfill).
        request = conn_old.execute(text("SELECT task_id, priority, retries, crashes FROM jobtable_request")).one()
        assert tuple(request) == ("t-pending", 3, 2, 0)
        stats = conn_old.execute(
            text(
                "SELECT span, status, sum(results), sum(retried), sum(wait_count_2) FROM jobtable_result_stats "
                "GROUP BY span, status"
            )
        )
        if dialect == "postgresql":
            # Every span, each result in its bucket.
            expected = {(s, "ERRORED", 1, 1, 0) for s in (30, 3600)} | {(s, "SUCCESSFUL", 1, 0, 1) for s in (30, 3600)}
        else:
            # 30-second rows only, the five-hour-old one folded into its hour.
            expected = {(3600, "ERRORED", 1, 1, 0), (30, "SUCCESSFUL", 1, 0, 1)}
        assert {tuple(int(v) if not isinstance(v, str) else v for v in row) for row in stats} == expected


def test_tables_py_describes_head(dialect: str, new_database: Callable[[], Engine]) -> None:
    """db/tables.py (what the code queries) is the schema the migrations
    build: changing tables.py without a migration fails here."""
    migrated = new_database()
    migrate.upgrade(migrated)
    declared = new_database()
    metadata.create_all(declared)
    with migrated.connect() as conn_migrated, declared.connect() as conn_declared:
        head, live = _schema_objects(conn_migrated), _schema_objects(conn_declared)
    assert live["tables"] == head["tables"]
    assert live["indexes"] == head["indexes"]


def test_live_trigger_sql_is_head(dialect: str, new_database: Callable[[], Engine]) -> None:
    """The stats triggers db/dialects generates (what the stats readers and
    retention expect) are those at head: changing that SQL, or the buckets and
    wait classes in tables.py, without a migration fails here."""
    engine = new_database()
    migrate.upgrade(engine)
    with engine.connect() as conn:
        head = _triggers(conn)
        # Replaced in one transaction, rolled back: DDL is transactional on
        # PostgreSQL and SQLite.  MySQL commits each statement: the triggers
        # stay replaced, in a database made for this test alone.
        for statement in [*dialects.drop_result_stats_ddl(dialect), *dialects.result_stats_ddl(dialect)]:
            conn.exec_driver_sql(statement.replace("%", "%%")) if dialect == "mysql" else conn.execute(text(statement))
        live = _triggers(conn)
        conn.rollback()
    assert live == head


def test_migrations_import_no_live_code() -> None:
    """Migrations are history: what they create must not change when
    jobtable's own modules do."""
    versions = Path(migrate.SCRIPT_LOCATION) / "versions"
    for path in sorted(versions.glob("0*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] if node.level == 0 else ["(relative)"]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in {"__future__", "typing", "datetime", "sqlalchemy", "alembic"}, (
                    f"{path.name} imports {module}"
                )


@pytest.mark.dialects("mysql")
def test_mysql_migration_interrupted_half_way_runs_again(dialect: str, new_database: Callable[[], Engine]) -> None:
    """MySQL's DDL commits statement by statement: a `jobtable migrate` cut
    off half way leaves some of its objects and no version row.  Running it
    again finishes the schema, equal to one migrated in one go."""
    interrupted = new_database()
    migrate.upgrade(interrupted)
    with interrupted.begin() as conn:
        # As if cut off inside 0001 (a table and an index missing), with
        # 0002's triggers half made and 0003's column already added.
        conn.execute(text(f"DELETE FROM {migrate.VERSION_TABLE}"))
        conn.execute(text("DROP TABLE jobtable_group"))
        conn.execute(text("DROP INDEX ix_jobtable_request_due ON jobtable_request"))
        conn.execute(text("DROP TRIGGER jobtable_result_stats_update"))
    assert migrate.upgrade(interrupted) == (None, migrate.head_revision())
    fresh = new_database()
    migrate.upgrade(fresh)
    with interrupted.connect() as conn_again, fresh.connect() as conn_fresh:
        assert _schema_objects(conn_again) == _schema_objects(conn_fresh)


@pytest.mark.dialects("mysql")
def test_mysql_stats_triggers_migration_goes_both_ways(dialect: str, new_database: Callable[[], Engine]) -> None:
    """0007 replaces the stats triggers' bodies (and its downgrade puts 0002's
    back); run twice, it replaces them again (MySQL's DDL is not transactional)."""
    at_0006 = new_database()
    migrate.upgrade(at_0006, "0006")
    stepped = new_database()
    migrate.upgrade(stepped)
    with at_0006.connect() as conn:
        first = _triggers(conn)
    with stepped.connect() as conn:
        head = _triggers(conn)
    assert first.keys() == head.keys() and first != head
    migrate.downgrade(stepped, "0006")
    with stepped.connect() as conn:
        assert _triggers(conn) == first
    migrate.upgrade(stepped)
    with stepped.begin() as conn:
        conn.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0006'"))
    migrate.upgrade(stepped)  # 0007 again, over its own triggers
    with stepped.connect() as conn:
        assert _triggers(conn) == head


@pytest.mark.dialects("postgresql")
def test_task_id_index_is_a_hash_index_at_head_and_a_btree_before(dialect: str, new_database: Callable[[], Engine]) -> None:
    """0008 rebuilds the request table's task_id index as a hash index (equality
    lookups only; cheaper per bulk-enqueued row), and its downgrade puts the
    B-tree back; lookups by task id use it either way."""

    def index_method(engine: Engine) -> str:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    text(
                        "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                        "WHERE c.relname = 'ix_jobtable_request_task_id'"
                    )
                ).scalar_one()
            )

    engine = new_database()
    migrate.upgrade(engine, "0007")
    assert index_method(engine) == "btree"
    migrate.upgrade(engine)
    assert index_method(engine) == "hash"
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(text("EXPLAIN SELECT id FROM jobtable_request WHERE task_id = ANY(ARRAY['a', 'b'])")).scalars()
        )
    assert "ix_jobtable_request_task_id" in plan
    migrate.downgrade(engine, "0007")
    assert index_method(engine) == "btree"
