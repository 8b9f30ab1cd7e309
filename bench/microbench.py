"""Micro-measurements behind the findings in RESULTS.md: each compares what
jobtable does today on a hot path with the fix suggested, in isolation.

    bench/.venv/bin/python bench/microbench.py

Uses a scratch database bench_micro (PostgreSQL) and a temp SQLite file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def per_call(fn: Callable[[], Any], n: int) -> float:
    """Microseconds per call (best of 3 rounds of n)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    import psycopg
    from sqlalchemy import create_engine, insert, text
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    import jobtable
    from benchapps.jobtable_jobs import Noop
    from jobtable import messages
    from jobtable.db import tables
    from jobtable.db.migrate import upgrade
    from jobtable.job_rows import positional_names as _positional_names

    print("## 1. Enqueue: inspect.signature per job (job_rows.positional_names)")
    print(f"   today, per job:            {per_call(lambda: _positional_names(Noop), 2000):8.1f} us")
    import functools

    cached_names = functools.lru_cache(maxsize=None)(_positional_names)
    print(f"   cached per class:          {per_call(lambda: cached_names(Noop), 2000):8.1f} us")

    msg = messages.dumps(messages.task_message(task_name="benchapps.jobtable_jobs.Noop", task_id=messages.new_task_id(),
                                               args=[], kwargs={}, queue="bench", priority=0, eta=None))
    harness.create_pg_database("bench_micro")
    try:
        with psycopg.connect(harness.pg_conninfo("bench_micro"), autocommit=True) as conn:
            print(f"\n## 2. PostgreSQL: one text[] of 1000 messages ({len(msg)} bytes each) as a parameter")
            arr = [msg] * 1000
            text_us = per_call(lambda: conn.execute("SELECT cardinality(%s::text[])", (arr,)).fetchone(), 20)
            bin_us = per_call(lambda: conn.execute("SELECT cardinality(%b::text[])", (arr,)).fetchone(), 20)
            print(f"   text format (%s, today):   {text_us / 1000:8.1f} ms")
            print(f"   binary format (%b):        {bin_us / 1000:8.1f} ms")

        jobtable.configure(database_url=harness.pg_url("bench_micro"))
        from jobtable.db import engine as db_engine

        engine = db_engine.get_engine()
        upgrade(engine)
        now = jobtable.db.clock.utcnow()  # type: ignore[attr-defined]
        row = {"task_id": "t", "task_name": "n", "queue": "q", "priority": 0, "attempt": 1, "retries": 0,
               "status": "SUCCESSFUL", "requested_at": now, "started_at": now, "ended_at": now, "worker_id": "w",
               "message": msg, "return_value": "null"}
        print("\n## 3. PostgreSQL: writing 100 result rows (worker completion, result_rows.insert_results)")
        counter = iter(range(10**9))

        def rows100() -> list[dict[str, Any]]:
            base = next(counter) * 100
            return [dict(row, task_id=f"t{base + i}") for i in range(100)]

        from sqlalchemy.dialects import postgresql as pg

        stmt = pg.insert(tables.result).on_conflict_do_nothing()
        cols = list(row)
        casts = {"priority": "int2", "attempt": "int4", "retries": "int4", "requested_at": "timestamptz",
                 "started_at": "timestamptz", "ended_at": "timestamptz"}
        unnest = (f"INSERT INTO jobtable_result ({', '.join(cols)}) SELECT * FROM unnest("
                  + ", ".join(f"%({c})b::{casts.get(c, 'text')}[]" for c in cols) + ") ON CONFLICT DO NOTHING")

        def executemany() -> None:
            with engine.begin() as c:
                c.execute(stmt, rows100())

        def one_unnest() -> None:
            rs = rows100()
            with engine.begin() as c:
                c.exec_driver_sql(unnest, {k: [r[k] for r in rs] for k in cols})

        print(f"   SQLAlchemy executemany (today): {per_call(executemany, 30) / 1000:8.2f} ms")
        print(f"   one INSERT ... unnest(%b):      {per_call(one_unnest, 30) / 1000:8.2f} ms")
        db_engine.reset_engines()
    finally:
        harness.drop_pg_database("bench_micro")

    print("\n## 4. SQLite: INSERT of 1 and of 1000 request rows (dialects.SqliteDialect.insert_requests)")
    path = harness.sqlite_path(harness.tmpdir(), "micro")
    engine = create_engine(f"sqlite:///{path}")
    tables.metadata.create_all(engine)
    req = {"task_id": "t", "task_name": "n", "queue": "q", "priority": 0, "state": "pending", "run_at": now,
           "expires_at": None, "concurrency_key": None, "attempt": 1, "retries": 0, "created_at": now, "message": msg}
    t = tables.request
    cached = sqlite_dialect.insert(t).on_conflict_do_nothing().returning(t.c.id, t.c.task_id)
    with engine.connect() as c:
        def today(n: int) -> Callable[[], None]:
            return lambda: c.execute(sqlite_dialect.insert(t).values([req] * n).on_conflict_do_nothing()
                                     .returning(t.c.id, t.c.task_id)).all()

        def fixed(n: int) -> Callable[[], None]:
            return lambda: c.execute(cached, [req] * n if n > 1 else req).all()

        print(f"   1 row, .values([...]) compiled each call (today): {per_call(today(1), 500):8.1f} us")
        print(f"   1 row, one cached statement:                      {per_call(fixed(1), 500):8.1f} us")
        print(f"   1000 rows, .values([...]) (today):                {per_call(today(1000), 3) / 1000:8.1f} ms")
        print(f"   1000 rows, cached statement, insertmanyvalues:    {per_call(fixed(1000), 3) / 1000:8.1f} ms")
        c.rollback()


if __name__ == "__main__":
    main()
