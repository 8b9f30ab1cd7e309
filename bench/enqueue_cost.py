"""Client cost of one enqueue (issue 13, step 1): CPU and round trips per call.

    PYTHONPATH=$PWD .venv/bin/python bench/enqueue_cost.py [-n 100] [--rounds 30] [--only job,celery,...] [--trace]
    PYTHONPATH=$PWD .venv/bin/python bench/enqueue_cost.py --profile job      # cProfile of one case

Absolute rates depend on the machine's load; these two figures do not (much):

- **client CPU per call** (``time.process_time``, user + system of this
  process, best of ``--rounds`` rounds of ``-n`` calls): what the caller's
  thread pays besides waiting on the database;
- **round trips per call**: libpq's protocol trace (``PQtrace``) of every
  connection the process opened, counting ``ReadyForQuery`` messages (one per
  ``Sync`` or simple ``Query``: one per exchange with the server).

Cases (PostgreSQL, durable commits, database ``bench_enqcost``):

- ``job``: ``Noop().run_in_worker(queue="bench")`` (Job API, own autocommit statement);
- ``job-conn``: the same with ``connection=`` inside the caller's transaction
  (the caller's BEGIN/COMMIT included in the figure);
- ``celery``: ``noop.apply_async()`` with ``broker_url = jobtable+postgresql+psycopg://``;
- ``celery-redis``: the same over Redis (reference);
- ``floor``: the same row (a real envelope, a new task id each time)
  inserted with bare psycopg, prepared, autocommit: ``INSERT ... VALUES ... RETURNING id``;
- ``floor-notify``: bare psycopg running jobtable's own single-row statement
  (the INSERT with its ``pg_notify``), prepared.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

DB = "bench_enqcost"
QUEUE = "bench"

#: Every DBAPI connection this process opened (SQLAlchemy pools and bare psycopg).
_dbapi: list[Any] = []


def _track_pools() -> None:
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    @event.listens_for(Pool, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _dbapi.append(dbapi_connection)


def cpu_per_call(cases: dict[str, Callable[[], Any]], n: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """{case: (median CPU µs, best CPU µs, median wall µs)} per call.

    The cases take turns, ``n`` calls each, for ``rounds`` rounds: the
    machine's load drifts by the second, and interleaving gives every case
    the same mix of it (back-to-back runs of one case differed by 1.6x).
    """
    import statistics

    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            cpu[name].append((time.process_time() - c0) / n * 1e6)
            wall[name].append((time.perf_counter() - w0) / n * 1e6)
    return {
        name: (statistics.median(cpu[name]), min(cpu[name]), statistics.median(wall[name])) for name in cases
    }


def round_trips_per_call(fn: Callable[[], Any], n: int) -> tuple[float, list[str]]:
    """Exchanges with the server per call, and the frontend messages of the last call."""
    from psycopg import pq

    with tempfile.TemporaryFile(mode="w+") as trace:
        conns = [c for c in _dbapi if not c.closed]
        for conn in conns:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            for _ in range(n - 1):
                fn()
            trace.flush()
            mark = os.lseek(trace.fileno(), 0, os.SEEK_END)
            fn()
        finally:
            for conn in conns:
                conn.pgconn.untrace()
        trace.seek(0)
        text = trace.read()
    ready = sum(1 for line in text.splitlines() if "\tReadyForQuery" in line and line.startswith("B"))
    last = [
        line.split("\t", 3)[2] + (" " + line.split("\t", 3)[3][:90] if line.count("\t") >= 3 else "")
        for line in text[mark:].splitlines()
        if line.startswith("F")
    ]
    return ready / n, last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", default="job,job-conn,celery,celery-redis,floor,floor-notify")
    parser.add_argument("--profile", help="cProfile this case instead (top functions by own time)")
    parser.add_argument("--trace", action="store_true", help="print the protocol messages of one call")
    args = parser.parse_args()

    import warnings

    import psycopg

    # Two Celery apps (jobtable, Redis) register the same bench task names.
    warnings.filterwarnings("ignore", message="Task name .* is already registered")
    os.environ.pop("JOBTABLE_DATABASE_URL", None)
    _track_pools()
    harness.create_pg_database(DB)
    url = harness.pg_url(DB)
    import jobtable
    from jobtable.db import engine as db_engine
    from jobtable.db.migrate import upgrade

    jobtable.configure(database_url=url)
    upgrade(db_engine.get_engine())

    from benchapps.jobtable_jobs import Noop

    cases: dict[str, Callable[[], Any]] = {}
    closers: list[Callable[[], Any]] = []

    cases["job"] = lambda: Noop().run_in_worker(queue=QUEUE)

    def job_conn() -> None:
        with db_engine.get_engine().begin() as conn:
            Noop().run_in_worker(queue=QUEUE, connection=conn)

    cases["job-conn"] = job_conn

    wanted = args.only.split(",") if not args.profile else [args.profile]
    if "celery" in wanted:
        from benchapps.celery_app import make_app

        app = make_app("jobtable+" + url)
        celery_noop = app.tasks["bench.noop"]
        cases["celery"] = lambda: celery_noop.apply_async()
        closers.append(app.close)
    if "celery-redis" in wanted:
        from benchapps.celery_app import make_app

        redis_app = make_app(harness.REDIS_URL)
        redis_noop = redis_app.tasks["bench.noop"]
        cases["celery-redis"] = lambda: redis_noop.apply_async()

        def flush_redis() -> None:
            import redis

            redis.Redis.from_url(harness.REDIS_URL).flushdb()
            redis_app.close()

        closers.append(flush_redis)

    # The floor: the row run_in_worker writes, by hand.
    from jobtable import messages
    from jobtable.db import clock
    from jobtable.job_rows import build_row as _row

    template = _row(Noop(), messages.new_task_id(), {}, clock.utcnow(), clock.utcnow(), QUEUE, None, None, None)
    template["unique_key"] = None
    columns = list(template)
    bare = psycopg.connect(harness.pg_conninfo(DB), autocommit=True)
    _dbapi.append(bare)
    closers.append(bare.close)
    plain_sql = (
        f"INSERT INTO jobtable_request ({', '.join(columns)}) VALUES ({', '.join('%s' for _ in columns)}) RETURNING id"
    )
    from jobtable.db.dialects.postgresql import _pg_insert_sql

    notify_sql = _pg_insert_sql(tuple(columns), None)

    def floor(sql: str, named: bool) -> Callable[[], Any]:
        def run() -> None:
            row = dict(template, task_id=messages.new_task_id())
            params: Any = row if named else [row[c] for c in columns]
            bare.execute(sql, params, prepare=True).fetchone()

        return run

    cases["floor"] = floor(plain_sql, False)
    cases["floor-notify"] = floor(notify_sql, True)

    if args.profile:
        fn = cases[args.profile]
        for _ in range(200):
            fn()
        profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the wait on the server is not the client's cost
        profiler.enable()
        for _ in range(args.n * 20):
            fn()
        profiler.disable()
        if os.environ.get("PROFILE_OUT"):
            profiler.dump_stats(os.environ["PROFILE_OUT"])
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)
    else:
        chosen = {name: cases[name] for name in wanted}
        for fn in chosen.values():
            for _ in range(200):  # warm: statements prepared, pools filled
                fn()
        load = os.getloadavg()[0]
        figures = cpu_per_call(chosen, args.n, args.rounds)
        print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; {args.rounds} rounds x {args.n} calls per case, interleaved")
        print("| case | client CPU µs/call, median (best round) | wall µs/call, median | round trips/call |")
        print("|---|---:|---:|---:|")
        for name in wanted:
            trips, last = round_trips_per_call(chosen[name], 100) if name != "celery-redis" else (0.0, [])
            median, best, wall = figures[name]
            print(f"| {name} | {median:.0f} ({best:.0f}) | {wall:.0f} | {trips:.2f} |", flush=True)
            if args.trace:
                for line in last:
                    print(f"    {line}")
    for close in closers:
        close()
    db_engine.reset_engines()
    harness.drop_pg_database(DB)


if __name__ == "__main__":
    main()
