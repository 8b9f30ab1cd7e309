"""What recording one dead member's end costs the supervisor (issue 12):
``rescue.rescue_member`` for a ledger of one started job and ``--finished``
finished-but-unwritten ones, claimed by a fake member, on PostgreSQL --
the one-statement path (``db/rescue_pg.py``) against the general one
(``--tries`` each, alternating).  Reported, as medians: this process's CPU
and its backend's for the whole transaction (connection checkout, BEGIN,
the rescue, COMMIT), and the statements sent.

    bench/.venv/bin/python bench/rescue_cost.py [--tries 20] [--finished 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

DB = "bench_rescue_cost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--finished", type=int, default=60)
    args = parser.parse_args(argv)
    harness.create_pg_database(DB)
    try:
        url = harness.pg_url(DB)
        import jobtable
        from sqlalchemy import event

        from jobtable.db import claims_sql, clock, tables, workers_sql
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade
        from jobtable.worker import rescue
        from jobtable.worker.ledger import LedgerState

        import benchapps.jobtable_jobs as bench_jobs

        jobtable.configure(database_url=url)
        engine = db_engine.get_engine()
        upgrade(engine)
        n = args.finished + 3
        cpu: dict[str, list[float]] = {"one statement": [], "general": []}
        db: dict[str, list[float]] = {"one statement": [], "general": []}
        sent: dict[str, int] = {}
        general = rescue._one_statement
        with db_engine.connect() as conn:
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        for i in range(2 * args.tries + 2):
            path = "one statement" if i % 2 == 0 else "general"
            jobtable.run_in_worker_many([bench_jobs.Noop() for _ in range(n)], queue="bench")
            worker_id = f"native:bench:{os.getpid()}:0:L{i}"
            with db_engine.connect() as conn, conn.begin():
                now = clock.utcnow()
                workers_sql.register_worker(conn, worker_id, hostname="h", pid=1, queues=["bench"], processes=1, now=now)
                rows = claims_sql.claim(conn, ["bench"], n, worker_id=worker_id, now=now)
            ids = [row.id for row in sorted(rows, key=lambda r: r.id)]
            ledger = LedgerState(running=[ids[0]], finished=ids[1:-2],
                                 statuses={row_id: tables.SUCCESSFUL for row_id in ids[1:-2]})
            rescue._one_statement = general if path == "one statement" else (lambda conn, ledger: False)
            statements: list[str] = []
            with open(f"/proc/{backend}/schedstat") as fh:
                b0 = int(fh.read().split()[0]) / 1e9
            c0 = time.process_time()
            with db_engine.connect() as conn, conn.begin():
                event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
                rescue.rescue_member(conn, worker_id, ids[0], clock.utcnow(), why="bench", ledger=ledger,
                                     quarantine_after=3)
            c1 = time.process_time()
            with open(f"/proc/{backend}/schedstat") as fh:
                b1 = int(fh.read().split()[0]) / 1e9
            if i >= 2:  # the first of each path warms this process
                cpu[path].append(c1 - c0)
                db[path].append(b1 - b0)
                sent[path] = len(statements)
        rescue._one_statement = general
        print(f"load {os.getloadavg()[0]:.2f}; a ledger of 1 started + {args.finished} finished jobs, "
              f"2 claimed-not-started; {args.tries} tries each; medians (ms):")
        for path in cpu:
            print(f"  {path:14} supervisor CPU {statistics.median(cpu[path]) * 1000:6.2f}, its backend "
                  f"{statistics.median(db[path]) * 1000:6.2f}, statements {sent[path]}")
    finally:
        from jobtable.db import engine as db_engine

        db_engine.reset_engines()
        harness.drop_pg_database(DB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
