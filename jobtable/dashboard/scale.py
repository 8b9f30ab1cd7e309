"""Fill a PostgreSQL database with a large queue and time every dashboard page.

    python -m jobtable.dashboard.scale --url postgresql+psycopg://postgres@127.0.0.1/jobtable_scale \
        --results 1000000 --pending 100000

The database is created (and migrated) if needed and emptied first.  Results
are spread over the last 7 days (the default retention), so the 24-hour
window holds about a seventh of them.  They are inserted by 8 connections at
once through the triggers that keep ``jobtable_result_stats`` (as workers
would write them), and the fill checks that the stats add up to the table.  Each page is requested several times
in-process (Starlette's TestClient, so the time is server time without the
network); the report gives the first (cold caches) and the median of the rest.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from ..db import engine as db_engine
from ..db import migrate, tables

QUEUES = ["default", "emails", "reports", "billing", "slow"]
JOBS = [f"app.jobs.Job{i:02d}" for i in range(20)]

_MESSAGE = (
    '{"body":"[[42,\\"customer-\' || g || \'\\"],{\\"retry\\":true},{}]","content-encoding":"utf-8",'
    '"content-type":"application/json","headers":{"lang":"py","task":"\' || task || \'","id":"\' || tid || \'",'
    '"eta":null,"expires":null,"retries":0,"root_id":"\' || tid || \'","argsrepr":"(42,)","kwargsrepr":"{}",'
    '"origin":"gen1@host","jobtable_retries":0},"properties":{"correlation_id":"\' || tid || \'",'
    '"delivery_info":{"exchange":"","routing_key":"default"},"priority":0}}'
)


WRITERS = 8
#: One writer's share of the results (``g % writers = k``).
RESULTS_SQL = """
    INSERT INTO jobtable_result (task_id, task_name, queue, priority, attempt, retries, status,
        requested_at, started_at, ended_at, worker_id, message, return_value, error_type,
        error_message, traceback, retried)
    SELECT tid, task, queue, 0, 1, 0, status,
           ended - interval '2 seconds' - (g % 7) * interval '1 second',
           ended - interval '1 second', ended, 'native:host-' || (g % 5), '{message}',
           CASE WHEN status = 'SUCCESSFUL' THEN '{{"ok": true, "n": ' || g || '}}' END,
           CASE WHEN status <> 'SUCCESSFUL' THEN 'ValueError' END,
           CASE WHEN status <> 'SUCCESSFUL' THEN 'bad input ' || g END,
           CASE WHEN status = 'ERRORED' THEN
             'Traceback (most recent call last):' || chr(10) || '  File "app/jobs.py", line 12, in run'
             || chr(10) || 'ValueError: bad input ' || g END,
           status = 'ERRORED' AND g % 3 = 0
    FROM (
        SELECT g, gen_random_uuid()::text AS tid,
               ({jobs})[1 + g % {n_jobs}] AS task,
               ({queues})[1 + (g / 7) % {n_queues}] AS queue,
               CASE WHEN g % 100 < 90 THEN 'SUCCESSFUL' WHEN g % 100 < 97 THEN 'ERRORED'
                    WHEN g % 100 < 99 THEN 'LOST' ELSE 'CANCELLED' END AS status,
               now() - (interval '7 days') * (g::float8 / :n) AS ended
        FROM generate_series(1, :n) AS g
        WHERE g % :writers = :k
    ) s
"""


def _ensure_database(url: str, recreate: bool = False) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if recreate:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def fill(url: str, results: int, pending: int, scheduled: int, running: int, recreate: bool = False) -> None:
    """Bulk-insert the rows with generate_series (a minute, not hours)."""
    _ensure_database(url, recreate)
    engine = db_engine.create_jobtable_engine(url)
    migrate.upgrade(engine)
    queues = "ARRAY[" + ",".join(f"'{q}'" for q in QUEUES) + "]"
    jobs = "ARRAY[" + ",".join(f"'{j}'" for j in JOBS) + "]"
    # A space after each colon: text() would read ":true" as a bind parameter.
    message = _MESSAGE.replace('":', '": ')
    with engine.begin() as conn:
        names = ", ".join(t.name for t in reversed(tables.metadata.sorted_tables))
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    started = time.perf_counter()
    # The results go in through the triggers that keep jobtable_result_stats,
    # as in a deployment: WRITERS connections at once, each writing every
    # WRITERS-th result, so every bucket is written by several connections
    # (several shards to sum, rows shared between concurrent upserts).
    errors: list[BaseException] = []

    def write_slice(k: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(RESULTS_SQL.format(message=message, jobs=jobs, queues=queues, n_jobs=len(JOBS),
                                            n_queues=len(QUEUES))),
                    {"n": results, "k": k, "writers": WRITERS},
                )
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=write_slice, args=(k,)) for k in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    with engine.connect() as conn:
        counted = conn.execute(select(func.count()).select_from(tables.result)).scalar_one()
        stats = tables.result_stats
        aggregated = conn.execute(
            select(func.coalesce(func.sum(stats.c.results), 0), func.count()).where(stats.c.span == 3600)
        ).one()
        fine_rows = conn.execute(select(func.count()).select_from(stats).where(stats.c.span == 30)).scalar_one()
    print(f"{results:,} results in {time.perf_counter() - started:.1f} s by {WRITERS} connections "
          f"(stats: {aggregated[1]:,} hourly rows summing to {int(aggregated[0]):,}, {fine_rows:,} 30-second rows)")
    if int(aggregated[0]) != counted:
        raise SystemExit(f"jobtable_result_stats counts {aggregated[0]} results, the table holds {counted}")
    with engine.begin() as conn:
        started = time.perf_counter()
        for state, count, run_at in (
            ("pending", pending, "now() - (g % 3600) * interval '1 second'"),
            ("scheduled", scheduled, "now() + (g % 86400) * interval '1 second'"),
            ("running", running, "now() - interval '1 minute'"),
        ):
            conn.execute(
                text(
                    f"""
                    INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, attempt,
                        retries, created_at, started_at, worker_id, deliveries, message)
                    SELECT tid, task, queue, (g % 5) - 2, '{state}', {run_at}, 1, 0, now() - interval '1 hour',
                           CASE WHEN '{state}' = 'running' THEN now() - (g % 300) * interval '1 second' END,
                           CASE WHEN '{state}' = 'running' THEN 'native:host-' || (g % 5) END, 0, '{message}'
                    FROM (
                        SELECT g, gen_random_uuid()::text AS tid, ({jobs})[1 + g % {len(JOBS)}] AS task,
                               ({queues})[1 + g % {len(QUEUES)}] AS queue
                        FROM generate_series(1, :n) AS g
                    ) s
                    """
                ),
                {"n": count},
            )
        conn.execute(
            text(
                """
                INSERT INTO jobtable_worker (id, kind, hostname, pid, queues, processes, started_at, heartbeat_at)
                SELECT 'native:host-' || g, 'native', 'host-' || g, 1000 + g, '["default", "emails"]', 8,
                       now() - interval '3 hours', now() - CASE WHEN g = 4 THEN interval '10 minutes' ELSE '0' END
                FROM generate_series(0, 4) AS g
                """
            )
        )
        print(f"{pending:,} pending, {scheduled:,} scheduled, {running} running in {time.perf_counter() - started:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobtable_result"))
        conn.execute(text("VACUUM ANALYZE jobtable_request"))
        conn.execute(text("VACUUM ANALYZE jobtable_result_stats"))
    engine.dispose()


def time_pages(url: str, repeat: int = 5) -> list[tuple[str, float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from . import create_app, queries

    queries.clear_cache()
    client = TestClient(create_app(authorize=lambda r: True, database_url=url))
    engine = db_engine.get_engine(url)
    with engine.connect() as conn:
        some = conn.execute(
            select(tables.result.c.id, tables.result.c.task_id).order_by(tables.result.c.id.desc()).limit(1)
        ).first()
        deep = conn.execute(
            select(tables.result.c.ended_at, tables.result.c.id)
            .order_by(tables.result.c.ended_at, tables.result.c.id)
            .limit(1)
            .offset(1000)
        ).first()
        pending = conn.execute(select(tables.request.c.id).where(tables.request.c.state == "pending").limit(1)).first()
    assert some is not None and deep is not None and pending is not None
    from .queries import encode_cursor

    deep_cursor = encode_cursor(deep.ended_at, deep.id)
    paths: list[tuple[str, dict[str, str]]] = [
        ("/", {}),
        ("/", {"X-Jobtable-Fragment": "1"}),
        ("/?window=1h", {}),
        ("/?window=7d", {}),
        ("/requests", {}),
        ("/requests?queue=emails", {}),
        ("/requests?job=app.jobs.Job03", {}),
        ("/requests?state=scheduled", {}),
        ("/processes", {}),
        ("/results", {}),
        ("/results?status=LOST", {}),
        ("/results?status=CANCELLED&queue=slow", {}),
        ("/results?queue=billing", {}),
        ("/results?queue=no-such-queue", {}),
        ("/results?job=no.such.Job", {}),
        ("/results?retried=1", {}),
        ("/results?status=SUCCESSFUL&queue=slow", {}),
        ("/results?job=app.jobs.Job07", {}),
        (f"/results?uuid={some.task_id}", {}),
        (f"/results?cursor={deep_cursor}", {}),
        (f"/results/{some.id}", {}),
        (f"/requests/{pending.id}", {}),
        ("/workers", {}),
        ("/schedules", {}),
    ]
    report = []
    for path, headers in paths:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code, response.text[:500])
        label = path + (" (live fragment)" if headers else "")
        report.append((label, times[0], statistics.median(times[1:]) if repeat > 1 else times[0]))
    return report


def _measure(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/jobtable_scale")
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--scheduled", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=40)
    parser.add_argument("--recreate", action="store_true", help="Drop and create the database first.")
    parser.add_argument("--no-fill", action="store_true", help="Time the pages of the database as it is.")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not args.no_fill:
        fill(args.url, args.results, args.pending, args.scheduled, args.running, args.recreate)
    print(f"{'page':60} {'first ms':>9} {'median ms':>10}")
    for label, first, median in time_pages(args.url, args.repeat):
        print(f"{label:60} {first:9.1f} {median:10.1f}")


if __name__ == "__main__":
    main()
