"""jobtable itself: the Job API to enqueue, ``jobtable worker`` to run.

Enqueue goes through the public API (``Job.run_in_worker`` and
``jobtable.run_in_worker_many``) in this process; the worker is the real
CLI in its own process group.  The claim scenario calls ``claims_sql.claim``
directly, inside a transaction that is rolled back so every repetition
sees the same table.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

import harness
from systems.base import System

QUEUE = "bench"


class JobtableNative(System):
    name = "jobtable"
    backends = ("postgresql", "sqlite", "mysql")
    pg_database = "bench_jobtable"

    def __init__(self, backend: str, tmpdir: Path) -> None:
        super().__init__(backend, tmpdir)
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------

    def fresh(self) -> None:
        import jobtable
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        if self.backend == "postgresql":
            harness.create_pg_database("bench_jobtable")
            self.url = harness.pg_url("bench_jobtable")
        elif self.backend == "mysql":
            import mysql_harness

            mysql_harness.create_database("bench_jobtable")
            self.url = mysql_harness.url("bench_jobtable")
        else:
            self.url = f"sqlite:///{harness.sqlite_path(self.tmpdir, 'jobtable')}"
        # The environment wins over configure(): set both, and the workers
        # inherit the variable.
        os.environ["JOBTABLE_DATABASE_URL"] = self.url
        jobtable.configure(database_url=self.url)
        upgrade(db_engine.get_engine())
        import benchapps.jobtable_jobs  # noqa: F401  (registers Noop and Stamp)

    def close(self) -> None:
        from jobtable.db import engine as db_engine

        db_engine.reset_engines()

    def cleanup(self) -> None:
        self.close()
        if self.backend == "postgresql":
            harness.drop_pg_database("bench_jobtable")
        elif self.backend == "mysql":
            import mysql_harness

            mysql_harness.drop_database("bench_jobtable")

    def server_cpu_seconds(self) -> float | None:
        if self.backend == "mysql":
            import mysql_harness

            return mysql_harness.server_cpu_seconds()
        return super().server_cpu_seconds()

    def engine(self) -> Any:
        from jobtable.db import engine as db_engine

        return db_engine.get_engine()

    # -- enqueueing ------------------------------------------------------------------

    def enqueue_single(self, n: int) -> None:
        from benchapps.jobtable_jobs import Noop

        for _ in range(n):
            Noop().run_in_worker(queue=QUEUE)

    def enqueue_bulk(self, n: int, batch: int = 10_000) -> None:
        import jobtable
        from benchapps.jobtable_jobs import Noop

        for start in range(0, n, batch):
            jobtable.run_in_worker_many([Noop() for _ in range(min(batch, n - start))], queue=QUEUE)

    def send_stamp(self, sent: float) -> None:
        from benchapps.jobtable_jobs import Stamp

        Stamp(sent).run_in_worker(queue=QUEUE)

    # -- workers -------------------------------------------------------------------

    def worker_commands(self) -> list[list[str]]:
        # One command: the worker forks its own 2 processes.
        return [[harness.venv_bin("jobtable"), "--app", "benchapps.jobtable_jobs", "worker",
                 "--max-processes", "2", "--queue", QUEUE]]

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        env["JOBTABLE_DATABASE_URL"] = self.url
        env["JOBTABLE_WORKER_STATS_EVERY"] = "0"
        return env

    def remaining(self) -> int:
        # A finished job leaves jobtable_request (its result row is written
        # in the same transaction), so an empty queue means all done.
        with self.reader() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobtable_request WHERE queue = :q"), {"q": QUEUE}).scalar())

    def results(self) -> int:
        with self.reader() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobtable_result")).scalar())

    def reader(self) -> Any:
        # Read-only polling must not take SQLite's write lock (jobtable begins
        # IMMEDIATE by default), or the harness would slow the worker down.
        return self.engine().connect().execution_options(sqlite_begin="DEFERRED")

    # -- the claim scenario ------------------------------------------------------------

    def fill_sql(self, n: int, *, state: str = "pending", priority: int = 0, future: bool = False,
                 results: bool = False) -> float:
        """Insert ``n`` rows with one INSERT ... SELECT (generate_series on
        PostgreSQL, a recursive CTE on SQLite), values as bound parameters.
        Returns the seconds it took."""
        from jobtable import messages
        from jobtable.db import clock
        from jobtable.db.types import UTCDateTime

        now = clock.utcnow()
        run_at = now + timedelta(days=30) if future else now
        envelope = messages.task_message(
            task_name="benchapps.jobtable_jobs.Noop", task_id="00000000-0000-0000-0000-000000000000",
            args=[], kwargs={}, queue=QUEUE, priority=priority, eta=None,
        )
        message = messages.dumps(envelope)
        engine = self.engine()
        dialect = engine.dialect
        ts = UTCDateTime().process_bind_param
        params = {"name": "benchapps.jobtable_jobs.Noop", "queue": QUEUE, "priority": priority,
                  "state": state, "run_at": ts(run_at, dialect), "now": ts(now, dialect), "message": message,
                  "n": n, "status": "SUCCESSFUL"}
        if engine.dialect.name == "postgresql":
            series = "FROM generate_series(1, :n) AS s(g)"
            prefix = ""
            tid = "'fill-' || :state || '-' || g"
        elif engine.dialect.name == "mysql":
            # A recursive CTE as on SQLite, in a derived table (MySQL wants
            # INSERT first), its depth limit raised for this session; || is
            # OR on MySQL: CONCAT.
            prefix = ""
            series = "FROM (WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) SELECT g FROM s) AS s"
            tid = "CONCAT('fill-', :state, '-', g)"
        else:
            prefix = "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) "
            series = "FROM s"
            tid = "'fill-' || :state || '-' || g"
        if results:
            sql = (prefix + "INSERT INTO jobtable_result (task_id, task_name, queue, priority, attempt, retries, "
                   "status, requested_at, started_at, ended_at, worker_id, message, return_value, retried) "
                   f"SELECT {tid}, :name, :queue, :priority, 1, 0, :status, :now, :now, :now, 'w', :message, 'null', false {series}")
        else:
            sql = (prefix + "INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, "
                   "attempt, retries, created_at, deliveries, message) "
                   f"SELECT {tid}, :name, :queue, :priority, :state, :run_at, 1, 0, :now, 0, :message {series}")
        t0 = time.perf_counter()
        with engine.begin() as conn:
            if engine.dialect.name == "mysql":
                conn.execute(text("SET SESSION max_recursive_iterations = :n"), {"n": n + 1})
            conn.execute(text(sql), params)
        self.analyze()
        return time.perf_counter() - t0

    def analyze(self) -> None:
        # What autovacuum's ANALYZE would do after a bulk load: without it the
        # planner sees a table of unknown size.
        engine = self.engine()
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE jobtable_request"))
                conn.execute(text("VACUUM ANALYZE jobtable_result"))
        elif engine.dialect.name == "mysql":
            with engine.begin() as conn:
                conn.execute(text("ANALYZE TABLE jobtable_request, jobtable_result"))
        else:
            with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
                conn.execute(text("ANALYZE"))

    def time_claim(self, batch: int = 100, repeat: int = 30) -> list[float]:
        """Seconds of one ``claims_sql.claim`` of ``batch`` jobs, ``repeat`` times,
        each in a transaction rolled back afterwards (so the table stays as
        filled).  The first run warms caches and statement compilation."""
        from jobtable.db import claims_sql, clock

        engine = self.engine()
        times = []
        for i in range(repeat + 1):
            with engine.connect() as conn:
                trans = conn.begin()
                t0 = time.perf_counter()
                rows = claims_sql.claim(conn, [QUEUE], batch, worker_id="bench", now=clock.utcnow())
                elapsed = time.perf_counter() - t0
                trans.rollback()
            if len(rows) != batch:
                raise harness.BenchError(f"claim returned {len(rows)} rows, expected {batch}")
            if i:
                times.append(elapsed)
        return times

    def time_promote(self, repeat: int = 10) -> list[float]:
        """Seconds of one ``claims_sql.promote_due`` (nothing due) -- the other
        statement a worker's claim loop runs."""
        from jobtable.db import claims_sql, clock

        engine = self.engine()
        times = []
        for i in range(repeat + 1):
            with engine.connect() as conn:
                trans = conn.begin()
                t0 = time.perf_counter()
                claims_sql.promote_due(conn, clock.utcnow())
                elapsed = time.perf_counter() - t0
                trans.rollback()
            if i:
                times.append(elapsed)
        return times

    def explain_claim(self, batch: int = 100) -> str:
        """The plan PostgreSQL runs for the claim (for RESULTS.md)."""
        from jobtable.db import claims_sql, clock

        engine = self.engine()
        if engine.dialect.name != "postgresql":
            return ""
        captured: list[tuple[str, Any]] = []

        from sqlalchemy import event

        def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            captured.append((statement, parameters))

        with engine.connect() as conn:
            event.listen(conn, "before_cursor_execute", grab)
            trans = conn.begin()
            claims_sql.claim(conn, [QUEUE], batch, worker_id="bench", now=clock.utcnow())
            event.remove(conn, "before_cursor_execute", grab)
            statement, parameters = captured[-1]
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters).fetchall()
            trans.rollback()
        return "\n".join(row[0] for row in plan)
