"""Issue 13, step 3: the measurements `run.py` does not make.

    bench/.venv/bin/python bench/bulk13.py indexes [--repeat 3] [-n 100000] [--only 0,1,2]
    bench/.venv/bin/python bench/bulk13.py reads [--rows 1000000]
    bench/.venv/bin/python bench/bulk13.py concurrent [-n 4000]
    bench/.venv/bin/python bench/bulk13.py connection [--repeat 3] [-n 100000]
    bench/.venv/bin/python bench/bulk13.py memory [-n 100000]
    bench/.venv/bin/python bench/bulk13.py cpu [--repeat 5] [--profile]

- ``indexes``: ``run_in_worker_many`` of n no-op jobs (batches of 10,000) on a
  fresh database with all of ``jobtable_request``'s indexes, and with each one
  dropped in turn (and ``task_id`` as a hash index): what each costs the bulk
  enqueue.  Only the claim index and ``task_id`` hold entries for pending
  rows; the other partial indexes (scheduled, running, keyed rows) are
  checked and skipped.
- ``reads``: what the ``task_id`` index serves, with ``--rows`` pending rows:
  a retried bulk enqueue's ``written_task_ids`` of 10,000 ids and one lookup
  by uuid (``JobRequest.refresh``), with and without the index.
- ``concurrent``: single enqueues (``run_in_worker``) from 1 and 8 threads of
  one process (the engine's pool at its default size) and from 4 processes
  at once: jobs/s over all of them, from a common start.
- ``connection``: a bulk enqueue in its own transaction vs with
  ``connection=`` (the caller's ``engine.begin()``), alternating.
- ``cpu``: client CPU per job (``time.process_time``, median of the rounds)
  of building 10,000 ``Noop()`` jobs, of ``job_rows.build_rows`` for them (the
  per-job Python of a bulk call) and of the whole ``run_in_worker_many``;
  ``--profile``: cProfile with a CPU clock of five whole calls.
- ``memory``: PSS and RSS per process (``/proc/PID/smaps_rollup``) of an idle
  ``jobtable worker --max-processes 2`` and of Celery prefork ``-c 2`` on
  Redis, and of each after draining n jobs.

Every figure is printed with the load average.  PostgreSQL at 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

import harness

DB = "bench_bulk13"
QUEUE = "bench"
TASK_ID_INDEX = "ix_jobtable_request_task_id"


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def fresh(dbname: str = DB) -> str:
    import jobtable
    from jobtable.db import engine as db_engine
    from jobtable.db.migrate import upgrade

    db_engine.reset_engines()
    harness.create_pg_database(dbname)
    url = harness.pg_url(dbname)
    os.environ["JOBTABLE_DATABASE_URL"] = url
    jobtable.configure(database_url=url)
    upgrade(db_engine.get_engine())
    import benchapps.jobtable_jobs  # noqa: F401  (registers Noop)

    return url


def sql(statement: str, dbname: str = DB) -> list[tuple[Any, ...]]:
    with psycopg.connect(harness.pg_conninfo(dbname), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def bulk(n: int, batch: int = 10_000, connection: bool = False) -> tuple[float, float]:
    """(jobs/s, client CPU µs per job) of n jobs through run_in_worker_many."""
    import jobtable
    from benchapps.jobtable_jobs import Noop
    from jobtable.db.engine import get_engine

    jobtable.run_in_worker_many([Noop() for _ in range(100)], queue=QUEUE)  # warm up
    engine = get_engine()
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, batch):
        jobs = [Noop() for _ in range(min(batch, n - start))]
        if connection:
            with engine.begin() as conn:
                jobtable.run_in_worker_many(jobs, queue=QUEUE, connection=conn)
        else:
            jobtable.run_in_worker_many(jobs, queue=QUEUE)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / elapsed, cpu / n * 1e6


# -- indexes ---------------------------------------------------------------------------

VARIANTS: dict[str, list[str]] = {
    "all indexes": [],
    "without ix_jobtable_request_task_id": [f"DROP INDEX {TASK_ID_INDEX}"],
    "task_id as a hash index": [
        f"DROP INDEX {TASK_ID_INDEX}",
        f"CREATE INDEX {TASK_ID_INDEX} ON jobtable_request USING hash (task_id)",
    ],
    # "all indexes" has the hash index since migration 0008: the B-tree it replaced.
    "task_id as a btree index": [
        f"DROP INDEX {TASK_ID_INDEX}",
        f"CREATE INDEX {TASK_ID_INDEX} ON jobtable_request USING btree (task_id)",
    ],
    "without ix_jobtable_request_claim": ["DROP INDEX ix_jobtable_request_claim"],
    "without ix_jobtable_request_due": ["DROP INDEX ix_jobtable_request_due"],
    "without ix_jobtable_request_running": ["DROP INDEX ix_jobtable_request_running"],
    "without uq_jobtable_request_unique_key": ["DROP INDEX uq_jobtable_request_unique_key"],
    "without ix_jobtable_request_custom_key": ["DROP INDEX ix_jobtable_request_custom_key"],
    "only the primary key": [
        f"DROP INDEX {name}"
        for name in (TASK_ID_INDEX, "ix_jobtable_request_claim", "ix_jobtable_request_due",
                     "ix_jobtable_request_running", "uq_jobtable_request_unique_key",
                     "ix_jobtable_request_custom_key")
    ],
}


def cmd_indexes(args: argparse.Namespace) -> None:
    print(f"indexes: n={args.n}, best of {args.repeat}, {load()}")
    names = [name for i, name in enumerate(VARIANTS) if not args.only or str(i) in args.only.split(",")]
    best: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeat):
        # Rounds, each variant once per round: every variant sees the same load.
        for name in names:
            ddl = VARIANTS[name]
            fresh()
            for statement in ddl:
                sql(statement)
            rate, cpu = bulk(args.n)
            best[name].append(rate)
            print(f"  round {round_ + 1} {name}: {rate:,.0f} jobs/s ({cpu:.1f} µs CPU/job), {load()}", flush=True)
    print("\n| indexes of jobtable_request | bulk jobs/s (best) | tries |\n|---|---:|---|")
    for name, rates in best.items():
        print(f"| {name} | {max(rates):,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} |")
    print(load())


def cmd_reads(args: argparse.Namespace) -> None:
    from jobtable.db import enqueue_sql, reads_sql
    from jobtable.db.engine import get_engine

    fresh()
    t0 = time.perf_counter()
    sql(
        "INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, attempt, retries, "
        "created_at, message) SELECT gen_random_uuid()::text, 'noop', 'bench', 0, 'pending', now(), 1, 0, now(), "
        f"'{{}}' FROM generate_series(1, {int(args.rows)})"
    )
    sql("VACUUM ANALYZE jobtable_request")
    print(f"reads: {args.rows:,} pending rows filled in {time.perf_counter() - t0:.1f} s, {load()}")
    ids = [r[0] for r in sql("SELECT task_id FROM jobtable_request ORDER BY random() LIMIT 10000")]
    engine = get_engine()

    def timed(label: str) -> None:
        written, lookup = [], []
        for _ in range(5):
            with engine.connect() as conn:
                t = time.perf_counter()
                found = enqueue_sql.written_task_ids(conn, ids)
                written.append(time.perf_counter() - t)
                assert len(found) == len(ids)
                t = time.perf_counter()
                conn.execute(reads_sql.shown_request(ids[0])).first()
                lookup.append(time.perf_counter() - t)
        print(f"| {label} | {statistics.median(written) * 1e3:.1f} ms | {statistics.median(lookup) * 1e3:.2f} ms |")

    print("\n| task_id index | written_task_ids(10,000 ids), median of 5 | one lookup by uuid |\n|---|---:|---:|")
    # Both built here, whatever the migrations made (a hash index since 0008).
    sql(f"DROP INDEX {TASK_ID_INDEX}")
    sql(f"CREATE INDEX {TASK_ID_INDEX} ON jobtable_request USING btree (task_id)")
    timed("btree")
    sql(f"DROP INDEX {TASK_ID_INDEX}")
    sql(f"CREATE INDEX {TASK_ID_INDEX} ON jobtable_request USING hash (task_id)")
    timed("hash (0008)")
    sql(f"DROP INDEX {TASK_ID_INDEX}")
    timed("none")
    print(load())


# -- concurrent single enqueues --------------------------------------------------------


def _enqueue_many(n: int) -> None:
    from benchapps.jobtable_jobs import Noop

    for _ in range(n):
        Noop().run_in_worker(queue=QUEUE)


def _threads(threads: int, n: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def run() -> None:
        barrier.wait()
        _enqueue_many(n // threads)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return (n // threads) * threads / (time.perf_counter() - t0)


def _process_main(url: str, n: int, start_at: float, out: Any) -> None:
    import jobtable

    jobtable.configure(database_url=url)
    import benchapps.jobtable_jobs  # noqa: F401

    _enqueue_many(5)  # connect and warm up before the common start
    late = time.time() > start_at
    while time.time() < start_at:
        time.sleep(0.001)
    _enqueue_many(n)
    out.put((time.time(), late))


def _processes(url: str, processes: int, n: int) -> float:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 20.0  # after every child imported and connected (checked below)
    procs = [ctx.Process(target=_process_main, args=(url, n // processes, start_at, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    ends = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    if any(late for _, late in ends):
        raise harness.BenchError("a child was not ready at the common start: raise the head start")
    return (n // processes) * processes / (max(end for end, _ in ends) - start_at)


def cmd_concurrent(args: argparse.Namespace) -> None:
    from jobtable.db.engine import get_engine

    print(f"concurrent single enqueues: n={args.n} per case, {load()}")
    rows = []
    for round_ in range(args.repeat):
        url = fresh()
        pool = get_engine().pool
        _enqueue_many(20)
        rows.append(("1 thread", _threads(1, args.n), round_))
        rows.append(("8 threads, one process", _threads(8, args.n), round_))
        rows.append((f"4 processes (spawned, pool size {pool.size()} each)", _processes(url, 4, args.n), round_))
        for label, rate, _ in rows[-3:]:
            print(f"  round {round_ + 1} {label}: {rate:,.0f} jobs/s, {load()}", flush=True)
    print("\n| enqueuers | jobs/s (best) | tries |\n|---|---:|---|")
    for label in dict.fromkeys(r[0] for r in rows):
        rates = [r[1] for r in rows if r[0] == label]
        print(f"| {label} | {max(rates):,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} |")
    print(load())


# -- connection= ----------------------------------------------------------------------


def cmd_connection(args: argparse.Namespace) -> None:
    print(f"bulk, own transaction vs connection=: n={args.n}, {load()}")
    got: dict[str, list[tuple[float, float]]] = {"own transaction": [], "connection= (engine.begin())": []}
    for round_ in range(args.repeat):
        for label in got:
            fresh()
            rate, cpu = bulk(args.n, connection=label != "own transaction")
            got[label].append((rate, cpu))
            print(f"  round {round_ + 1} {label}: {rate:,.0f} jobs/s ({cpu:.1f} µs CPU/job), {load()}", flush=True)
    print("\n| bulk enqueue | jobs/s (best) | client µs/job (best) | tries |\n|---|---:|---:|---|")
    for label, tries in got.items():
        print(f"| {label} | {max(t[0] for t in tries):,.0f} | {min(t[1] for t in tries):.1f} | "
              f"{', '.join(f'{t[0]:,.0f}' for t in tries)} |")
    print(load())


# -- client CPU per job ---------------------------------------------------------------


def cmd_cpu(args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    import jobtable
    from benchapps.jobtable_jobs import Noop
    from jobtable import enqueue, job_rows, messages
    from jobtable.db import clock

    fresh()
    n = 10_000
    jobtable.run_in_worker_many([Noop() for _ in range(n)], queue=QUEUE)  # warm up
    if args.profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(5):
            jobtable.run_in_worker_many([Noop() for _ in range(n)], queue=QUEUE)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    phases: dict[str, list[float]] = {"Noop() x n": [], "job_rows.build_rows": [], "run_in_worker_many (whole)": []}
    for _ in range(args.repeat):
        c = time.process_time()
        jobs = [Noop() for _ in range(n)]
        phases["Noop() x n"].append(time.process_time() - c)
        now = clock.utcnow()
        ids = [messages.new_task_id() for _ in jobs]
        c = time.process_time()
        job_rows.build_rows(jobs, ids, {}, now, now, QUEUE, None, None, None, 1)  # type: ignore[arg-type]
        phases["job_rows.build_rows"].append(time.process_time() - c)
        c = time.process_time()
        jobtable.run_in_worker_many(jobs, queue=QUEUE)
        phases["run_in_worker_many (whole)"].append(time.process_time() - c)
    print(f"client CPU per job, n={n}, median of {args.repeat}, {load()}")
    print("\n| phase | µs per job (median) | tries |\n|---|---:|---|")
    for phase, tries in phases.items():
        print(f"| {phase} | {statistics.median(tries) / n * 1e6:.2f} | "
              f"{', '.join(f'{t / n * 1e6:.2f}' for t in tries)} |")
    print(load())


# -- memory ---------------------------------------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return sorted(pids)


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if parts[0] in ("Pss:", "Rss:"):
                values[parts[0]] = int(parts[1])
    return values["Pss:"], values["Rss:"]


def _settled(pgid: int, processes: int, timeout: float = 60.0) -> list[tuple[int, int, int]]:
    """Per-process (pid, PSS, RSS) once the group has its processes and its
    total PSS has stopped moving (within 1 % over 2 s)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        pids = _group_pids(pgid)
        if len(pids) >= processes:
            try:
                got = [(pid, *_memory(pid)) for pid in pids]
            except OSError:
                continue
            total = sum(g[1] for g in got)
            if last > 0 and abs(total - last) <= last * 0.01:
                return got
            last = total
        time.sleep(2.0)
    raise harness.BenchError("the worker group's memory did not settle")


def _report(label: str, got: list[tuple[int, int, int]]) -> None:
    per = ", ".join(f"{pss / 1024:.1f}" for _, pss, _ in got)
    print(f"| {label} | {len(got)} | {per} | {sum(g[1] for g in got) / 1024:.1f} | "
          f"{sum(g[2] for g in got) / 1024:.1f} |", flush=True)


def cmd_memory(args: argparse.Namespace) -> None:
    from systems.celery_redis import CeleryRedis
    from systems.jobtable_native import JobtableNative

    tmp = harness.tmpdir()
    print(f"memory: drained n={args.n}, logs in {tmp}, {load()}")
    print("\n| worker | processes | PSS per process (MiB) | PSS total (MiB) | RSS total (MiB) |\n|---|---:|---|---:|---:|")
    for cls in (JobtableNative, CeleryRedis):
        system = cls("postgresql", tmp)
        system.fresh()
        workers = system.start_workers(tmp)
        try:
            pgid = workers[0].proc.pid  # type: ignore[union-attr]
            _report(f"{system.name}, idle", _settled(pgid, 3))
            system.fill(args.n)
            harness.wait_until(lambda: system.remaining() == 0, timeout=900, interval=0.5, what="the drain")
            _report(f"{system.name}, after {args.n:,} jobs", _settled(pgid, 3))
        finally:
            harness.stop_workers(workers)
            system.close()
            system.cleanup()
    print(load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("indexes", "reads", "concurrent", "connection", "memory", "cpu"))
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", help="indexes: the variants to run, by number (0 = all indexes), e.g. 0,1,2")
    args = parser.parse_args()
    defaults = {"indexes": 100_000, "connection": 100_000, "concurrent": 4000, "memory": 100_000, "reads": 0, "cpu": 0}
    args.n = args.n or defaults[args.command]
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    try:
        globals()[f"cmd_{args.command}"](args)
    finally:
        from jobtable.db import engine as db_engine

        db_engine.reset_engines()
        harness.drop_pg_database(DB)


if __name__ == "__main__":
    main()
