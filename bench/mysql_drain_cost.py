"""Where MariaDB spends a drained job (issue 17, step 2): the native worker's
statements, replayed by bare mysqlclient, timed one by one.

    PYTHONPATH=$PWD bench/.venv/bin/python bench/mysql_drain_cost.py [-n 20000] [--batch 100] [--procs 1|2]
        [--triggers on|off] [--plan]

A fresh ``bench_mysql_drain`` database migrated to jobtable's schema is
filled with ``n`` no-op rows (the envelope jobtable writes); then each
process runs the worker's cycle on its own connection, as
``worker/process.py`` does with a claimed batch of ``--batch`` jobs -- one
transaction that finishes the previous batch and claims the next:

- ``pick``: ``SELECT id, priority ... FOR UPDATE SKIP LOCKED`` (dialects/mysql.pick);
- ``mark``: ``UPDATE ... SET state = 'running', ... WHERE id IN (...)``;
- ``read``: ``SELECT * ... WHERE id IN (...)`` (the claimed rows);
- ``revokes``: the revoke check of the batch's task ids (revokes_sql);
- ``take``: ``DELETE ... RETURNING id`` of the rows still running (take_running);
- ``results``: the multi-row result INSERT (its per-row stats trigger included);
- ``commit``.

No Python job runs, no SQLAlchemy: what is left is the server's work, plus
one round trip per statement.  It prints microseconds per job for each
statement (wall time of the statement: the server's work and the round
trip), the jobs/s of the cycle, and mariadbd's CPU per job (the whole
server: other users included).  ``--triggers off`` drops the stats triggers
first (what they cost); ``--plan`` prints EXPLAIN of the claim.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mysql_harness  # noqa: E402
from mysql_floor import row_values  # noqa: E402

DB = "bench_mysql_drain"
STEPS = ("pick", "mark", "read", "revokes", "take", "results", "commit")
RESULT_COLUMNS = ("task_id", "task_name", "queue", "priority", "attempt", "retries", "concurrency_key", "status",
                  "requested_at", "started_at", "ended_at", "worker_id", "message", "return_value", "retried")


def values_triggers() -> list[str]:
    """The candidate: each trigger computes the bucket, wait and wait class
    into local variables and upserts with one INSERT ... VALUES (no derived
    tables), the same counters as jobtable's."""
    from jobtable.db import tables
    from jobtable.db.dialects.stats_sql import wait_class

    counters = tables.STATS_COUNTERS
    span = min(tables.STATS_SPANS)

    def upsert(sign: int, ref: str, p: str) -> str:
        values = [f"{sign}", f"CASE WHEN {ref}.retried THEN {sign} ELSE 0 END",
                  *(f"CASE WHEN {p}k = {i} THEN {sign} ELSE 0 END" for i in range(tables.WAIT_CLASSES)),
                  *(f"CASE WHEN {p}k = {i} THEN {'' if sign > 0 else '-'}{p}w ELSE 0.0 END"
                    for i in range(tables.WAIT_CLASSES))]
        return (f"SET {p}t = TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', {ref}.ended_at);\n"
                f"SET {p}w = CASE WHEN {ref}.status = 'SUCCESSFUL' AND {ref}.started_at IS NOT NULL "
                f"AND {ref}.requested_at IS NOT NULL THEN GREATEST(0.0, TIMESTAMPDIFF(MICROSECOND, {ref}.requested_at, "
                f"{ref}.started_at) / 1000000.0) END;\n"
                f"SET {p}k = {wait_class(p + 'w')};\n"
                f"INSERT INTO jobtable_result_stats (span, bucket_start, queue, status, shard, {', '.join(counters)})\n"
                f"VALUES ({span}, {p}t - {p}t % {span}, {ref}.queue, {ref}.status, CONNECTION_ID() % 8, "
                f"{', '.join(values)})\n"
                f"ON DUPLICATE KEY UPDATE {', '.join(f'{c} = jobtable_result_stats.{c} + VALUES({c})' for c in counters)};")

    def declare(p: str) -> str:
        return f"DECLARE {p}t BIGINT; DECLARE {p}w DECIMAL(30, 4); DECLARE {p}k INT;\n"

    return [
        "CREATE TRIGGER jobtable_result_stats_insert AFTER INSERT ON jobtable_result FOR EACH ROW\n"
        f"BEGIN\n{declare('n_')}{upsert(1, 'NEW', 'n_')}\nEND",
        "CREATE TRIGGER jobtable_result_stats_delete AFTER DELETE ON jobtable_result FOR EACH ROW\n"
        f"BEGIN\n{declare('o_')}{upsert(-1, 'OLD', 'o_')}\nEND",
    ]


def fill(n: int) -> None:
    conn = mysql_harness.connect(DB)
    cur = conn.cursor()
    columns, _ = row_values()
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    insert = f"INSERT INTO jobtable_request ({', '.join(columns)}) VALUES "
    for start in range(0, n, 1000):
        rows = [row_values()[1] for _ in range(min(1000, n - start))]
        cur.execute(insert + ", ".join([one] * len(rows)), [v for r in rows for v in r])
        conn.commit()
    conn.close()


def cycle(batch: int, out: Any) -> None:
    """Drain the table as a worker member does; put per-step seconds and the job count in ``out``."""
    conn = mysql_harness.connect(DB)
    cur = conn.cursor()
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cur.execute("SET time_zone = '+00:00'")
    conn.autocommit(False)
    worker = f"bench-{os.getpid()}"
    spent = dict.fromkeys(STEPS, 0.0)
    done: list[tuple[Any, ...]] = []
    jobs = 0
    result_sql = (f"INSERT INTO jobtable_result ({', '.join(RESULT_COLUMNS)}) VALUES "
                  "{} ON DUPLICATE KEY UPDATE id = id")

    def timed(step: str, sql: str, args: Any = None) -> list[Any]:
        t0 = time.perf_counter()
        cur.execute(sql, args)
        rows = list(cur.fetchall())
        spent[step] += time.perf_counter() - t0
        return rows

    while True:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        if done:
            ids = [row[0] for row in done]
            marks = ", ".join(["%s"] * len(ids))
            kept = {r[0] for r in timed("take", f"DELETE FROM jobtable_request WHERE id IN ({marks}) AND worker_id = %s "
                                                "AND state = 'running' RETURNING id", [*ids, worker])}
            values = []
            for row in done:
                if row[0] in kept:
                    # id, task_id, task_name, queue, priority, ..., created_at, message (see read)
                    values.append((row[1], row[2], row[3], row[4], row[5], row[6], row[7], "SUCCESSFUL", row[8], now,
                                   now, worker, row[9], "null", 0))
            one = "(" + ", ".join(["%s"] * len(RESULT_COLUMNS)) + ")"
            timed("results", result_sql.format(", ".join([one] * len(values))), [v for r in values for v in r])
            jobs += len(values)
            done = []
        picked = timed("pick", "(SELECT id, priority FROM jobtable_request WHERE state = 'pending' AND queue = %s "
                               "ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED)", ["bench", batch])
        if picked:
            ids = [row[0] for row in picked]
            marks = ", ".join(["%s"] * len(ids))
            timed("mark", f"UPDATE jobtable_request SET state = 'running', worker_id = %s, started_at = %s, "
                          f"lease_expires_at = NULL WHERE id IN ({marks})", [worker, now, *ids])
            done = timed("read", "SELECT id, task_id, task_name, queue, priority, attempt, retries, concurrency_key, "
                                 f"created_at, message FROM jobtable_request WHERE id IN ({marks})", ids)
            timed("revokes", "SELECT value, kind, name, expires_at FROM jobtable_revoke WHERE value IN "
                             f"({marks})", [row[1] for row in done])
        t0 = time.perf_counter()
        conn.commit()
        spent["commit"] += time.perf_counter() - t0
        if not picked and not done:
            break
    conn.close()
    out.put((spent, jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--triggers", choices=("on", "off", "values"), default="on",
                        help="on: jobtable's; off: none; values: candidate triggers (one INSERT ... VALUES per row)")
    parser.add_argument("--plan", action="store_true")
    args = parser.parse_args(argv)

    mysql_harness.create_database(DB)
    from jobtable.db.engine import create_jobtable_engine
    from jobtable.db.migrate import upgrade

    engine = create_jobtable_engine(mysql_harness.url(DB))
    upgrade(engine)
    engine.dispose()
    conn = mysql_harness.connect(DB)
    cur = conn.cursor()
    if args.triggers != "on":
        for op in ("insert", "update", "delete"):
            cur.execute(f"DROP TRIGGER IF EXISTS jobtable_result_stats_{op}")
    if args.triggers == "values":
        for statement in values_triggers():
            cur.execute(statement)
    print(f"server: {mysql_harness.server_version(cur)}; {mysql_harness.durability(cur)}")
    fill(args.n)
    cur.execute("ANALYZE TABLE jobtable_request")
    cur.fetchall()
    if args.plan:
        cur.execute("EXPLAIN (SELECT id, priority FROM jobtable_request WHERE state = 'pending' AND queue = 'bench' "
                    f"ORDER BY priority DESC, id LIMIT {args.batch} FOR UPDATE SKIP LOCKED)")
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            print("EXPLAIN pick:", dict(zip(names, row)))
    print(f"filled {args.n}; load average {os.getloadavg()}; batch {args.batch}, {args.procs} process(es), "
          f"triggers {args.triggers}")

    out: Any = multiprocessing.Queue()
    cpu0 = mysql_harness.server_cpu_seconds()
    t0 = time.perf_counter()
    procs = [multiprocessing.Process(target=cycle, args=(args.batch, out)) for _ in range(args.procs)]
    for p in procs:
        p.start()
    got = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    cpu1 = mysql_harness.server_cpu_seconds()
    jobs = sum(j for _, j in got)
    print(f"\n| step | us per job (wall, summed over processes) |\n|---|---:|")
    for step in STEPS:
        print(f"| {step} | {sum(s[step] for s, _ in got) / jobs * 1e6:.1f} |")
    print(f"\n{jobs} jobs in {elapsed:.2f} s: **{jobs / elapsed:,.0f} jobs/s**; mariadbd CPU "
          f"{((cpu1 or 0) - (cpu0 or 0)) / jobs * 1e6:.0f} us/job; load average at the end {os.getloadavg()}")
    conn.close()
    mysql_harness.drop_database(DB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
