"""Celery over a database broker (issue 5): jobtable's Kombu transport, and
Kombu's own SQLAlchemy transport for comparison."""

from __future__ import annotations

from typing import Any

import psycopg

import harness
from systems.celery_redis import QUEUE, CeleryBase


class CeleryJobtable(CeleryBase):
    """Celery with ``broker_url = "jobtable+postgresql+psycopg://..."``."""

    name = "celery+jobtable-transport"
    backends = ("postgresql", "sqlite", "mysql")
    pg_database = "bench_celery_jt"

    def broker_url(self) -> str:
        if self.backend == "postgresql":
            return "jobtable+" + harness.pg_url("bench_celery_jt")
        if self.backend == "mysql":
            import mysql_harness

            return "jobtable+" + mysql_harness.url("bench_celery_jt")
        return f"jobtable+sqlite:///{self.sqlite_file}"

    def fresh(self) -> None:
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        self.close()
        db_engine.reset_engines()  # the transport's engines point at the previous database
        if self.backend == "postgresql":
            harness.create_pg_database("bench_celery_jt")
        elif self.backend == "mysql":
            import mysql_harness

            mysql_harness.create_database("bench_celery_jt")
        else:
            self.sqlite_file = harness.sqlite_path(self.tmpdir, "celery_jt")
        url = self.broker_url()[len("jobtable+"):]
        self.engine = db_engine.create_jobtable_engine(url)
        upgrade(self.engine)
        self.make_app()

    def remaining(self) -> int:
        # Acked messages leave the table; with acks_late that is after the task ran.
        from sqlalchemy import text

        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobtable_request WHERE queue = :q"), {"q": QUEUE}).scalar())

    def close(self) -> None:
        super().close()

    def cleanup(self) -> None:
        from jobtable.db import engine as db_engine

        self.close()
        self.engine.dispose()
        # The transport's own engines (jobtable's per-process registry) hold
        # pooled connections too: close them before the database goes.
        db_engine.reset_engines()
        if self.backend == "postgresql":
            harness.drop_pg_database("bench_celery_jt")
        elif self.backend == "mysql":
            import mysql_harness

            mysql_harness.drop_database("bench_celery_jt")

    def server_cpu_seconds(self) -> float | None:
        if self.backend == "mysql":
            import mysql_harness

            return mysql_harness.server_cpu_seconds()
        return super().server_cpu_seconds()


class CelerySqla(CeleryBase):
    """Celery with Kombu's stock SQLAlchemy transport (``sqla+postgresql://``)."""

    name = "celery+kombu-sqla"
    backends = ("postgresql", "mysql")
    db = pg_database = "bench_celery_sqla"

    def broker_url(self) -> str:
        if self.backend == "mysql":
            import mysql_harness

            # Kombu's transport over SQLAlchemy's mysqlclient driver, the one
            # jobtable uses: same server, same driver.
            return "sqla+" + mysql_harness.url(self.db)
        return "sqla+" + harness.pg_url(self.db)

    def fresh(self) -> None:
        self.close()
        dispose_kombu_sqla_engines()
        if self.backend == "mysql":
            import mysql_harness

            mysql_harness.create_database(self.db)
            self.conn: Any = MysqlReader(self.db)
        else:
            harness.create_pg_database(self.db)
            self.conn = psycopg.connect(harness.pg_conninfo(self.db), autocommit=True)
        self.make_app()
        # Kombu creates its tables on first use: make sure they exist before
        # the harness starts watching them.
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_declare(QUEUE)

    def remaining(self) -> int:
        # Kombu's SQLAlchemy transport never deletes a row: a fetched message
        # turns invisible, and acks only touch the consumer's memory.  So
        # "done" here is "delivered"; at most 8 prefetched no-op tasks
        # (2 processes x prefetch 4) may still be running -- microseconds.
        row = self.conn.execute(
            "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id "
            "WHERE q.name = %s AND m.visible", (QUEUE,)
        ).fetchone()
        return int(row[0])

    def cleanup(self) -> None:
        self.close()
        dispose_kombu_sqla_engines()
        self.conn.close()
        if self.backend == "mysql":
            import mysql_harness

            mysql_harness.drop_database(self.db)
        else:
            harness.drop_pg_database(self.db)

    def server_cpu_seconds(self) -> float | None:
        if self.backend == "mysql":
            import mysql_harness

            return mysql_harness.server_cpu_seconds()
        return super().server_cpu_seconds()


class MysqlReader:
    """The harness's polling connection on MariaDB, with psycopg's
    ``conn.execute(sql, params).fetchone()`` shape (autocommit: each poll
    sees what was committed)."""

    def __init__(self, db: str) -> None:
        import mysql_harness

        self.conn = mysql_harness.connect(db)
        self.conn.autocommit(True)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql, params)
        return cur

    def close(self) -> None:
        self.conn.close()


def dispose_kombu_sqla_engines() -> None:
    """Kombu's SQLAlchemy transport caches its engines in a class attribute,
    for the life of the process: drop them before the database is recreated."""
    from kombu.transport.sqlalchemy import Channel

    for engine, _session in list(Channel._engines.values()):
        engine.dispose()
    Channel._engines.clear()
