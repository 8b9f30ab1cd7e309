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
first (what they cost), ``--triggers 0002`` puts their first form (before
step 2) in their place; ``--claim three`` replays the claim as it was before step 2;
``--plan`` prints EXPLAIN of the claim.
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


def first_triggers() -> list[str]:
    """The stats triggers as migration 0002 created them (INSERT ... SELECT
    from nested derived tables), frozen in migration 0007 for its downgrade."""
    import importlib.util

    import jobtable.db.migrations

    path = Path(jobtable.db.migrations.__file__).parent / "versions" / "0007_mysql_stats_triggers.py"
    spec = importlib.util.spec_from_file_location("jobtable_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module._MYSQL_DDL_0002)


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


def cycle(batch: int, folded: bool, out: Any) -> None:
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
        columns = "id, task_id, task_name, queue, priority, attempt, retries, concurrency_key, created_at, message"
        if folded:  # the claim since step 2: the locking read returns the rows
            picked = timed("pick", f"(SELECT {columns} FROM jobtable_request WHERE state = 'pending' AND queue = %s "
                                   "ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED)", ["bench", batch])
        else:
            picked = timed("pick", "(SELECT id, priority FROM jobtable_request WHERE state = 'pending' AND queue = %s "
                                   "ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED)", ["bench", batch])
        if picked:
            ids = [row[0] for row in picked]
            marks = ", ".join(["%s"] * len(ids))
            timed("mark", f"UPDATE jobtable_request SET state = 'running', worker_id = %s, started_at = %s, "
                          f"lease_expires_at = NULL WHERE id IN ({marks})", [worker, now, *ids])
            done = picked if folded else timed("read", f"SELECT {columns} FROM jobtable_request WHERE id IN ({marks})",
                                               ids)
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
    parser.add_argument("--triggers", choices=("on", "off", "0002"), default="on",
                        help="on: jobtable's (head); off: none; 0002: the first form (before step 2)")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--claim", choices=("three", "folded"), default="folded",
                        help="three: pick ids, update, read the rows (before step 2); folded: the locking read "
                             "returns the rows (step 2)")
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
    if args.triggers == "0002":
        for statement in first_triggers():
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
          f"triggers {args.triggers}, claim {args.claim}")

    out: Any = multiprocessing.Queue()
    cpu0 = mysql_harness.server_cpu_seconds()
    t0 = time.perf_counter()
    procs = [multiprocessing.Process(target=cycle, args=(args.batch, args.claim == "folded", out)) for _ in range(args.procs)]
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
