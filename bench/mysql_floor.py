"""What this machine's MariaDB can do at all (issue 17): the floor under jobtable's MySQL figures.

    PYTHONPATH=$PWD bench/.venv/bin/python bench/mysql_floor.py [-n 2000] [--bulk-n 20000]

Bare mysqlclient (no SQLAlchemy, no jobtable code), one connection, the same
row jobtable writes for a no-op job (a real envelope, a new task id each
time) into a fresh ``bench_mysql_floor`` database migrated to jobtable's
schema (so the indexes are the ones a real enqueue pays for):

- ``select 1``: one round trip, nothing written (the network + parse floor);
- ``insert, autocommit``: one INSERT per row, autocommit on: one round trip
  and one durable commit per row -- the floor of a durable single enqueue;
- ``insert + commit``: the same with an explicit COMMIT (two round trips);
- ``get_lock + insert + commit + release``: what a should_enqueue enqueue pays;
- ``multi-row insert``: 1,000 rows per INSERT ... VALUES, one COMMIT per
  statement -- the floor of a bulk enqueue by the bare driver;
- ``prebuilt multi-row insert``: the same rows, the statements built before
  the clock starts -- the server's own rate, nothing of the client's;
It prints the server's durability settings (``innodb_flush_log_at_trx_commit``,
``sync_binlog``, ``log_bin``) and the load average, and drops the database.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mysql_harness  # noqa: E402

DB = "bench_mysql_floor"


def row_values() -> tuple[list[str], list[Any]]:
    """A no-op job's row as jobtable builds it (Job API), with a new task id."""
    from jobtable import messages
    from jobtable.db import clock
    from jobtable.message_checks import checked_row

    now = clock.utcnow()
    task_id = str(uuid.uuid4())
    envelope = messages.task_message(task_name="benchapps.jobtable_jobs.Noop", task_id=task_id, args=[],
                                     kwargs={}, queue="bench", priority=0, eta=None)
    row = checked_row(envelope, "bench", now, source="floor")
    row["unique_key"] = None
    columns = list(row)
    values = [v.replace(tzinfo=None) if hasattr(v, "tzinfo") and v.tzinfo else v for v in row.values()]
    return columns, values


def rate(n: int, step: Any) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="round trips per single-row case")
    parser.add_argument("--bulk-n", type=int, default=20000, help="rows of the multi-row case")
    args = parser.parse_args(argv)

    mysql_harness.create_database(DB)
    from jobtable.db.engine import create_jobtable_engine
    from jobtable.db.migrate import upgrade

    engine = create_jobtable_engine(mysql_harness.url(DB))
    upgrade(engine)
    engine.dispose()

    conn = mysql_harness.connect(DB)
    cur = conn.cursor()
    settings = mysql_harness.durability(cur)
    print(f"server: {mysql_harness.server_version(cur)}; {settings}; load average {os.getloadavg()}")

    columns, _ = row_values()
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    insert = f"INSERT IGNORE INTO jobtable_request ({', '.join(columns)}) VALUES "
    rows = [row_values()[1] for _ in range(max(args.n, 1000))]
    out: list[tuple[str, float]] = []

    out.append(("select 1 (one round trip)", rate(args.n, lambda i: (cur.execute("SELECT 1"), cur.fetchall()))))

    conn.autocommit(True)
    out.append(("insert, autocommit (1 round trip, 1 durable commit)",
                rate(args.n, lambda i: cur.execute(insert + one, rows[i] if i < len(rows) else row_values()[1]))))
    cur.execute("DELETE FROM jobtable_request")

    conn.autocommit(False)

    def insert_commit(i: int) -> None:
        cur.execute(insert + one, rows[i])
        conn.commit()

    out.append(("insert + commit (2 round trips)", rate(args.n, insert_commit)))
    cur.execute("DELETE FROM jobtable_request")
    conn.commit()

    def locked(i: int) -> None:
        cur.execute("SELECT GET_LOCK(%s, 60)", ("jobtable:floor",))
        cur.fetchall()
        cur.execute(insert + one, rows[i])
        conn.commit()
        cur.execute("SELECT RELEASE_LOCK(%s)", ("jobtable:floor",))
        cur.fetchall()

    out.append(("get_lock + insert + commit + release_lock (4 round trips)", rate(args.n, locked)))
    cur.execute("DELETE FROM jobtable_request")
    conn.commit()

    batch = 1000
    many = [row_values()[1] for _ in range(batch)]
    statement = insert + ", ".join([one] * batch)

    def bulk(i: int) -> None:
        # New task ids each batch: the same row twice would be IGNOREd (unique task id).
        for r in many:
            r[0] = str(uuid.uuid4())
        cur.execute(statement, [v for r in many for v in r])
        conn.commit()

    t0 = time.perf_counter()
    for i in range(args.bulk_n // batch):
        bulk(i)
    out.append((f"multi-row insert, {batch} rows per statement, 1 commit each (rows/s)",
                args.bulk_n / (time.perf_counter() - t0)))
    cur.execute("DELETE FROM jobtable_request")
    conn.commit()

    # The server's share alone: statements built before the clock starts
    # (the driver's own literals, as jobtable sends them), one COMMIT per
    # 10,000 rows as run_in_worker_many(10,000 jobs) does.
    for size in (1000, 5000):
        statements = []
        for _ in range(args.bulk_n // size):
            literals = []
            for j in range(size):
                r = many[j % batch]
                r[0] = str(uuid.uuid4())  # each row its own task id
                literals.append(b"(" + b", ".join(conn.literal(v) for v in r) + b")")
            statements.append(insert.encode() + b", ".join(literals))
        t0 = time.perf_counter()
        for k, st in enumerate(statements):
            cur.execute(st)
            if (k + 1) * size % 10000 == 0:
                conn.commit()
        conn.commit()
        out.append((f"prebuilt multi-row insert, {size} rows per statement, 1 commit per 10,000 (rows/s)",
                    args.bulk_n / (time.perf_counter() - t0)))
        cur.execute("SELECT COUNT(*) FROM jobtable_request")
        assert cur.fetchone()[0] == args.bulk_n, "rows lost (duplicate task ids?)"
        cur.execute("DELETE FROM jobtable_request")
        conn.commit()

    print("\n| floor (bare mysqlclient) | per second |\n|---|---:|")
    for what, value in out:
        print(f"| {what} | {value:,.0f} |")
    print(f"\n(load average at the end {os.getloadavg()})")
    conn.close()
    mysql_harness.drop_database(DB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
