"""What starting one pool member costs, piece by piece (issue 12: the floor
of a member death).

    bench/.venv/bin/python bench/member_start.py [--tries 20]

In a process with a worker's imports (jobtable's worker, the poison bench
app, ``sqlalchemy.orm`` preloaded as the supervisor does) and a warm engine,
forks ``--tries`` children one after the other.  Each child does what a
spare does before its first job -- ``gc.freeze()``, adopt the parent's
engine, build a ``Member`` (its listener, executor, middleware chain),
connect and LISTEN (``Member._connection``) -- then its first claim and
its first result write on a fresh database row, and exits with
``os._exit``.  Reported, as medians: the parent's CPU in ``fork()``; the
child's CPU (user + system, from ``wait4``) in total and up to "connected";
the child's CPU for its first claim, first job (a no-op) and first write,
and again for the second of each; its backend's CPU (``/proc/<pid>/schedstat``)
to connect, for the first claim and the first write, and again warm.  Needs PostgreSQL at ``harness.pg_url`` (a database
``bench_member_start`` is made and dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

DB = "bench_member_start"


def backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def child(write: int) -> None:  # pragma: no cover - runs in the forked child
    import gc

    code = 1
    try:
        gc.freeze()
        t0 = time.process_time()
        from jobtable.db import clock, engine as db_engine
        from jobtable.db import claims_sql, finish_sql
        from jobtable.worker.config import WorkerConfig
        from jobtable.worker.execute import Executor  # noqa: F401
        from jobtable.worker.process import Member
        from jobtable.worker.slots import Slots
        from jobtable.worker.timeouts import NoTimeout

        db_engine.adopt_parent_engines()
        member = Member(WorkerConfig(queues=["bench"]), f"native:bench:{os.getpid()}:0:x", Slots(1).slot(0),
                        timer=NoTimeout(), should_stop=lambda: False)
        conn = member._connection()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        t_connected = time.process_time()
        b_connected = backend_cpu(pid)
        out: dict[str, float] = {"child_to_connected": t_connected - t0, "backend_connect": b_connected}
        for label in ("first", "warm"):
            b0, c0 = backend_cpu(pid), time.process_time()
            rows = claims_sql.claim(conn, ["bench"], 1, worker_id=member.worker_id, now=clock.utcnow())
            b1, c1 = backend_cpu(pid), time.process_time()
            outcome = member.executor.run(rows[0])
            c2 = time.process_time()
            with member._tx(conn):
                finish_sql.finish(conn, member.worker_id, [outcome], clock.utcnow())
            b3, c3 = backend_cpu(pid), time.process_time()
            out[f"backend_{label}_claim"] = b1 - b0
            out[f"backend_{label}_write"] = b3 - b1
            out[f"child_{label}_claim"] = c1 - c0
            out[f"child_{label}_run"] = c2 - c1
            out[f"child_{label}_write"] = c3 - c2
        os.write(write, json.dumps(out).encode())
        code = 0
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--cold", action="store_true",
                        help="do not warm the claim in the parent first (as the supervisor did before session 14)")
    args = parser.parse_args(argv)
    harness.create_pg_database(DB)
    try:
        url = harness.pg_url(DB)
        os.environ["JOBTABLE_DATABASE_URL"] = url
        import jobtable
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        jobtable.configure(database_url=url)
        upgrade(db_engine.get_engine())
        import benchapps.jobtable_jobs as bench_jobs  # noqa: F401
        import benchapps.poison_jobs  # noqa: F401
        import jobtable.worker.main  # noqa: F401
        import sqlalchemy.orm  # noqa: F401  (main._preload_for_members)

        engine = db_engine.get_engine()
        db_engine.check_schema(engine)
        with db_engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        if not args.cold:
            from jobtable.worker import main as worker_main

            worker_main._warm_for_members(engine, ["bench"])
        jobtable.run_in_worker_many([bench_jobs.Noop() for _ in range(2 * args.tries)], queue="bench")
        figures: dict[str, list[float]] = {}
        for _ in range(args.tries):
            read, write = os.pipe()
            before = time.process_time()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                child(write)
            forked = time.process_time() - before
            os.close(write)
            with os.fdopen(read) as fh:
                data = fh.read()
            _, status, usage = os.wait4(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0 or not data:
                raise SystemExit("a child failed")
            got = json.loads(data)
            got["parent_fork"] = forked
            got["child_total"] = usage.ru_utime + usage.ru_stime
            for key, value in got.items():
                figures.setdefault(key, []).append(value)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"load {os.getloadavg()[0]:.2f}; parent max RSS {rss:.0f} MiB; {args.tries} children; medians (ms):")
        for key in ("parent_fork", "child_to_connected", "child_first_claim", "child_first_run", "child_first_write",
                    "child_warm_claim", "child_warm_run", "child_warm_write", "child_total",
                    "backend_connect", "backend_first_claim", "backend_first_write", "backend_warm_claim",
                    "backend_warm_write"):
            values = figures[key]
            print(f"  {key:22} {statistics.median(values) * 1000:7.2f}  (min {min(values) * 1000:.2f}, "
                  f"max {max(values) * 1000:.2f})")
    finally:
        from jobtable.db import engine as db_engine

        db_engine.reset_engines()
        harness.drop_pg_database(DB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
