"""Poison drain (issue 12): does a 1 % sprinkle of poison slow a drain down,
and does every poison job run exactly once?

    .venv/bin/python bench/poison.py                 # 10,000 jobs, 1 % poison, best of 2, alternating
    .venv/bin/python bench/poison.py --repeat 3 --json out.json

Each try is a fresh PostgreSQL database (``bench_poison``, dropped at the
end) filled with N jobs, then drained by the real worker (the command of
``systems/jobtable_native.py``: ``jobtable --app benchapps.poison_jobs worker
--max-processes 2 --queue bench``).  Clean tries hold N no-ops; poison tries
hold the same N jobs of which 1 % are poison, spread evenly over six kinds
and shuffled in (fixed seed):

- an exception whose ``__str__`` raises,
- a return value whose ``__repr__`` raises and that is not JSON-encodable,
- a return value nested 10,000 deep,
- an exception message with a NUL and a lone surrogate,
- ``os._exit(1)`` (kills its pool member; no retries: LOST once, never re-run),
- undecodable rows: a good row's columns copied by SQL with ``message = 'not
  json'`` (must become DEAD_LETTER).

Clean and poison tries alternate (clean, poison, clean, poison...), so both
see the same machine load; the best of each is reported.  "Done" follows
run.py's drain: the queue's rows for ``bench`` are gone *and* every task id
has its result row (polled every 5 ms).  Reported, as in run.py: jobs/s from
the first finished job to the last (the drain rate) and from the worker's
launch.

After each poison try (workers still running, one more second, so a re-run
would show) it checks: every task id has exactly one result row, nothing is
left in the queue, each poison job wrote exactly one run line, and each
kind's status.  Jobs that finished in the same unwritten batch as an
``os._exit`` job keep the status they ended with, their return value or
traceback lost (``error_type`` ``ResultLost``: the ledger knows how they
ended, their results died with the process): counted and shown, not
hidden; one recorded LOST instead (a ledger without statuses) is counted
as collateral.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import text  # noqa: E402

import harness  # noqa: E402
from systems.jobtable_native import QUEUE, JobtableNative  # noqa: E402

DB = "bench_poison"
NOOP = "benchapps.jobtable_jobs.Noop"
UNDECODABLE = "undecodable"
#: Run in this order in each round, so all see the same load (``--kinds``
#: chooses the poison tries: "all" is mode "poison", "no-exit" is mode
#: "poison-no-exit", a kind's name is mode "only-<kind>").
MODES = ("clean", "poison", "poison-no-exit")
ALL_KINDS = ("raise-unprintable", "return-unrepresentable", "return-deep", "raise-nul-surrogate", "os-exit",
             UNDECODABLE)


def modes_of(kinds_arg: str) -> list[str]:
    """The tries of one round for ``--kinds`` (comma-separated: all, no-exit, or kind names)."""
    modes = ["clean"]
    for item in (part.strip() for part in kinds_arg.split(",")):
        if item == "all":
            modes.append("poison")
        elif item == "no-exit":
            modes.append("poison-no-exit")
        elif item in ALL_KINDS:
            modes.append(f"only-{item}")
        else:
            raise SystemExit(f"--kinds: unknown entry {item!r}; expected all, no-exit or one of {', '.join(ALL_KINDS)}")
    if len(set(modes)) != len(modes):
        raise SystemExit(f"--kinds: an entry is repeated in {kinds_arg!r}")
    return modes


def mode_order(mode: str, n: int, fraction: float, seed: int) -> list[str]:
    """The kinds of the n jobs of a try of ``mode``.  ``only-<kind>``: the
    whole poison share (``fraction`` of n) is of that kind, so its cost per
    job is measured on ~6x as many jobs as in the mix."""
    if mode == "clean":
        return ["noop"] * n
    if mode == "poison":
        return plan(n, fraction, seed)
    if mode == "poison-no-exit":
        return plan(n, fraction, seed, ("os-exit",))
    only = mode[len("only-"):]
    return plan(n, fraction, seed, tuple(k for k in ALL_KINDS if k != only))


class PoisonSystem(JobtableNative):
    name = "jobtable-poison"
    backends = ("postgresql",)
    pg_database = DB

    def fresh(self) -> None:
        import jobtable
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        self.close()
        harness.create_pg_database(DB)
        self.url = harness.pg_url(DB)
        os.environ["JOBTABLE_DATABASE_URL"] = self.url
        jobtable.configure(database_url=self.url)
        upgrade(db_engine.get_engine())
        import benchapps.poison_jobs  # noqa: F401  (registers Noop and the poison jobs)

    def cleanup(self) -> None:
        self.close()
        harness.drop_pg_database(DB)

    def worker_commands(self) -> list[list[str]]:
        return [[harness.venv_bin("jobtable"), "--app", "benchapps.poison_jobs", "worker",
                 "--max-processes", "2", "--queue", QUEUE]]

    log_tag = ""
    #: Another jobtable tree the worker imports instead of this one
    #: (``--baseline``): put on the worker's PYTHONPATH before site-packages.
    worker_tree = ""

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        if self.worker_tree:
            env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], self.worker_tree])
        return env

    def start_workers(self, logdir: Path, latency_file: Path | None = None) -> list[harness.Worker]:
        # One log per try (the harness would reuse one name per system).
        return harness.start_workers(self.worker_commands(), self.worker_env(latency_file), logdir,
                                     f"poison-{self.log_tag}")

    def results_count(self) -> int:
        with self.reader() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobtable_result")).scalar())


def plan(n: int, fraction: float, seed: int, without: tuple[str, ...] = ()) -> list[str]:
    """The kind of each of the n jobs, in queue order ("noop" or a poison kind)."""
    from benchapps.poison_jobs import KINDS

    kinds = [k for k in (*KINDS, UNDECODABLE) if k not in without]
    poison = round(n * fraction)
    order = [kinds[i % len(kinds)] for i in range(poison)] + ["noop"] * (n - poison)
    random.Random(seed).shuffle(order)
    if order and order[0] == UNDECODABLE:  # the first row must be a good one to copy
        j = order.index("noop")
        order[0], order[j] = order[j], order[0]
    return order


def fill(system: PoisonSystem, order: list[str], runs_file: Path) -> dict[str, str]:
    """Enqueue the jobs of ``order`` in that order; returns task id -> kind."""
    import jobtable
    from benchapps.jobtable_jobs import Noop
    from benchapps.poison_jobs import KINDS

    kinds: dict[str, str] = {}
    batch: list[Any] = []
    batch_kinds: list[str] = []

    def flush() -> None:
        for start in range(0, len(batch), 10_000):
            got = jobtable.run_in_worker_many(batch[start:start + 10_000], queue=QUEUE)
            for req, kind in zip(got, batch_kinds[start:start + 10_000]):
                assert req is not None
                kinds[req.uuid] = kind
        batch.clear()
        batch_kinds.clear()

    engine = system.engine()
    for i, kind in enumerate(order):
        if kind == UNDECODABLE:
            flush()
            task_id = f"undecodable-{i}"
            with engine.begin() as conn:
                # A good row's columns, the message replaced by something that is not JSON.
                conn.execute(text(
                    "INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, expires_at, "
                    "concurrency_key, attempt, retries, created_at, deliveries, crashes, message) "
                    "SELECT :tid, task_name, queue, priority, state, run_at, expires_at, concurrency_key, attempt, "
                    "retries, created_at, deliveries, crashes, 'not json' FROM jobtable_request "
                    "WHERE task_name = :noop ORDER BY id DESC LIMIT 1"), {"tid": task_id, "noop": NOOP})
            kinds[task_id] = kind
            continue
        batch.append(Noop() if kind == "noop" else KINDS[kind](str(runs_file), f"p{i}"))
        batch_kinds.append(kind)
    flush()
    return kinds


class CpuMeter:
    """CPU of the whole drain, dead processes included: the worker's process
    group (live processes' own CPU plus what the reaped members used, which
    the supervisor's cutime holds) and the worker's PostgreSQL backends
    (each backend's schedstat, sampled at every poll and kept at its last
    value, so a backend that ended with its member still counts, less its
    last few milliseconds).  The harness's own backends are left out."""

    def __init__(self, system: PoisonSystem) -> None:
        import psycopg

        self.conn = psycopg.connect(harness.pg_conninfo("postgres"), autocommit=True)
        mine = {self.conn.info.backend_pid}
        with system.reader() as conn:
            mine.add(int(conn.execute(text("SELECT pg_backend_pid()")).scalar()))
        self.exclude = mine
        self.backends: dict[int, float] = {}

    def sample(self) -> None:
        pids = [r[0] for r in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'", (DB,))]
        for pid in pids:
            if pid in self.exclude:
                continue
            try:
                with open(f"/proc/{pid}/schedstat") as fh:
                    self.backends[pid] = int(fh.read().split()[0]) / 1e9
            except OSError:
                pass

    def db_seconds(self) -> float:
        # Backends that were there at the first sample count from then on
        # (the caller subtracts), later ones whole.
        return sum(self.backends.values())

    @staticmethod
    def worker_seconds(workers: list) -> float:
        # Dead members included: their CPU is in their parents' cutime/cstime.
        return harness.group_cpu_seconds(workers, reaped=True)

    def close(self) -> None:
        self.conn.close()


def drain(system: PoisonSystem, n: int, logdir: Path, timeout: float, settle: float) -> tuple[dict[str, Any], list]:
    waiting = system.remaining()
    if waiting != n:
        raise harness.BenchError(f"{waiting} jobs waiting after filling {n}")
    meter = CpuMeter(system)

    def done() -> bool:
        meter.sample()
        return system.remaining() == 0 and system.results_count() >= n

    workers = system.start_workers(logdir)
    try:
        started = workers[0].started_at
        first = harness.wait_until(lambda: system.remaining() < n, timeout=min(timeout, 120), interval=0.002,
                                   what="the first job to finish", workers=workers)
        cpu_first = harness.group_cpu_seconds(workers)
        db_first = system.server_cpu_seconds()
        meter.sample()
        all_first, all_db_first = meter.worker_seconds(workers), meter.db_seconds()
        backends_first = dict(meter.backends)
        end = harness.wait_until(done, timeout=timeout, interval=0.005, what=f"{n} results", workers=workers)
        cpu_done = harness.group_cpu_seconds(workers)
        db_done = system.server_cpu_seconds()
        all_done, all_db_done = meter.worker_seconds(workers), meter.db_seconds()
        if settle:
            time.sleep(settle)  # a re-run, if any, has time to happen and show
    finally:
        harness.stop_workers(workers)
        meter.close()
    figures = {
        "jobs_per_s": n / (end - first),
        "from_start": n / (end - started),
        "startup_s": first - started,
        "seconds": end - started,
        "drain_s": end - first,
        "worker_cpu_us_per_job": (cpu_done - cpu_first) / n * 1e6,
        "db_cpu_us_per_job": (db_done - db_first) / n * 1e6 if db_first is not None else None,
        # Dead members and their backends included (CpuMeter), first job to last.
        "all_worker_cpu_s": all_done - all_first,
        "all_db_cpu_s": all_db_done - all_db_first,
        # Backends that appeared during the drain (replacement members' two
        # connections each) and the CPU they used.
        "new_backends": len(set(meter.backends) - set(backends_first)),
        "new_backends_cpu_s": sum(v for pid, v in meter.backends.items() if pid not in backends_first),
    }
    return figures, workers


EXPECTED = {
    # kind: (status, error_type or None for any)
    "noop": ("SUCCESSFUL", None),
    "raise-unprintable": ("ERRORED", None),
    "return-unrepresentable": ("SUCCESSFUL", None),
    "return-deep": ("SUCCESSFUL", None),
    "raise-nul-surrogate": ("ERRORED", None),
    "os-exit": ("LOST", "WorkerLost"),
    UNDECODABLE: ("DEAD_LETTER", "UndecodableMessage"),
}


def verify(system: PoisonSystem, kinds: dict[str, str], runs_file: Path, workers: list) -> dict[str, Any]:
    """Exactly-once checks; returns what was found (``ok`` False on any failure)."""
    problems: list[str] = []
    with system.reader() as conn:
        left = int(conn.execute(text("SELECT count(*) FROM jobtable_request")).scalar())
        rows = conn.execute(text("SELECT task_id, status, error_type, error_message, return_value FROM jobtable_result")).all()
    if left:
        problems.append(f"{left} row(s) left in jobtable_request")
    per_task = Counter(r.task_id for r in rows)
    missing = [t for t in kinds if t not in per_task]
    extra = [t for t in per_task if t not in kinds]
    dup = {t: c for t, c in per_task.items() if c != 1}
    if missing:
        problems.append(f"{len(missing)} job(s) without a result, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected result task id(s)")
    if dup:
        problems.append(f"{len(dup)} job(s) with more than one result row, e.g. {list(dup.items())[:3]}")
    statuses: dict[str, Counter] = {}
    collateral = Counter()
    result_lost = Counter()  # status kept, return value / traceback lost with the process
    for r in rows:
        kind = kinds.get(r.task_id, "?")
        statuses.setdefault(kind, Counter())[f"{r.status}/{r.error_type or '-'}"] += 1
        want_status, want_type = EXPECTED.get(kind, ("?", None))
        ok = r.status == want_status and (want_type is None or r.error_type == want_type)
        if ok and r.error_type == "ResultLost":
            result_lost[kind] += 1
        if not ok:
            if kind != "os-exit" and r.status == "LOST" and r.error_type == "ResultLost":
                collateral[kind] += 1  # finished in a batch an os._exit killed before its flush
            else:
                problems.append(f"{kind} {r.task_id}: {r.status}/{r.error_type}, expected {want_status}/{want_type}")
    # Run lines of the poison jobs that run code: each exactly once.
    lines = runs_file.read_text().splitlines() if runs_file.exists() else []
    runs = Counter(line.split()[1] for line in lines)
    poison_jobs = Counter(k for k in kinds.values() if k not in ("noop", UNDECODABLE))
    if sum(runs.values()) != sum(poison_jobs.values()) or any(c != 1 for c in runs.values()):
        problems.append(f"poison run lines: {sum(runs.values())} lines for {len(runs)} jobs, "
                        f"{sum(poison_jobs.values())} poison jobs; runs>1: {[t for t, c in runs.items() if c != 1][:5]}")
    runs_by_kind = Counter(line.split()[0] for line in lines)
    # Member deaths seen in the worker's log (one per os._exit job expected).
    # (Only before the harness's stop: its SIGTERM to the process group plus
    # the supervisor's own SIGTERM is a second signal, and idle members then
    # leave with os._exit(1) too.)
    log = workers[0].log_path.read_text(errors="replace") if workers else ""
    deaths = log.split("SIGTERM: no new jobs")[0].count("exited with code 1.")
    exits = poison_jobs.get("os-exit", 0)
    if deaths != exits:
        problems.append(f"{deaths} member deaths logged, {exits} os._exit jobs")
    # Samples of what the poison became (for the report).
    samples = {}
    for r in rows:
        kind = kinds.get(r.task_id)
        if kind not in (None, "noop") and kind not in samples:
            samples[kind] = {"status": r.status, "error_type": r.error_type,
                             "error_message": (r.error_message or "")[:160],
                             "return_value": (r.return_value or "")[:160]}
    return {
        "ok": not problems,
        "problems": problems[:20],
        "results": len(rows),
        "jobs": len(kinds),
        "statuses": {k: dict(v) for k, v in sorted(statuses.items())},
        "noop_collateral_result_lost": collateral.get("noop", 0),
        "collateral_result_lost_by_kind": dict(collateral),
        "status_kept_result_lost_by_kind": dict(result_lost),
        "poison_runs_by_kind": dict(runs_by_kind),
        "poison_jobs_by_kind": dict(poison_jobs),
        "member_deaths": deaths,
        "samples": samples,
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def summarize(tries: list[dict[str, Any]], modes: list[str], n: int, fraction: float, version: str) -> None:
    """The table and per-kind costs of the tries of one worker version."""
    labels = {"clean": "clean (no-ops)", "poison": f"{fraction:.0%} poison, all six kinds",
              "poison-no-exit": f"{fraction:.0%} poison, without os._exit (five kinds)"}
    labels.update({f"only-{k}": f"{fraction:.0%} poison, all {k}" for k in ALL_KINDS})
    tries = [t for t in tries if t["version"] == version]
    best = {m: max((t for t in tries if t["mode"] == m), key=lambda t: t["jobs_per_s"]) for m in modes}
    best_start = {m: max((t for t in tries if t["mode"] == m), key=lambda t: t["from_start"]) for m in modes}
    print(f"\n## worker: {version}\n")
    print(f"| drain of {n:,} jobs, 2 procs | tries (jobs/s, in run order) | best (jobs/s) | vs clean "
          "| incl. start-up, best (jobs/s) | vs clean | best drain (s) | worker CPU per job (us) | DB CPU per job (us) "
          "| CPU, dead included: worker + its backends (s, median) "
          "| exactly once | not SUCCESSFUL only because of a member death | status kept, result lost (ResultLost) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|")
    for m in modes:
        b = best[m]
        shown = ", ".join(f"{t['jobs_per_s']:,.0f}" for t in tries if t["mode"] == m)
        ok = all(t["check"]["ok"] for t in tries if t["mode"] == m)
        collateral = max(sum(t["check"]["collateral_result_lost_by_kind"].values()) for t in tries if t["mode"] == m)
        kept = [sum(t["check"]["status_kept_result_lost_by_kind"].values()) for t in tries if t["mode"] == m]
        print(f"| {labels[m]} | {shown} | {b['jobs_per_s']:,.0f} | {b['jobs_per_s'] / best['clean']['jobs_per_s']:.2f} "
              f"| {best_start[m]['from_start']:,.0f} | {best_start[m]['from_start'] / best_start['clean']['from_start']:.2f} "
              f"| {b['drain_s']:.2f} | {b['worker_cpu_us_per_job']:,.0f} | {b['db_cpu_us_per_job']:,.0f} "
              f"| {median([t['all_worker_cpu_s'] for t in tries if t['mode'] == m]):.2f} + "
              f"{median([t['all_db_cpu_s'] for t in tries if t['mode'] == m]):.2f} "
              f"| {'yes' if ok else '**no**'} | {collateral} | {min(kept)}–{max(kept)} |")
    if "poison" in best:
        ratio = best["poison"]["jobs_per_s"] / best["clean"]["jobs_per_s"]
        print(f"\npoison / clean: {ratio:.2f} (drain rate); target >= 0.90: {'met' if ratio >= 0.9 else '**missed**'}")
    clean_drain = best["clean"]["drain_s"]
    for m in modes[1:]:
        check = best[m]["check"]
        count = sum(check["poison_jobs_by_kind"].values()) + sum(check["statuses"].get(UNDECODABLE, {}).values())
        if count:
            extra = best[m]["drain_s"] - clean_drain
            print(f"{m}: best drain {extra:+.3f} s over clean for {count} poison jobs: ~{extra / count * 1000:.2f} ms each")
    p = [t for t in tries if t["mode"] == "poison"]
    exits = p[-1]["check"]["poison_jobs_by_kind"].get("os-exit", 0) if p else 0
    if exits and "poison-no-exit" in best:
        extra = best["poison"]["drain_s"] - clean_drain
        nx = best["poison-no-exit"]["drain_s"] - clean_drain
        print(f"os._exit jobs: {exits}; best poison drain took {extra:+.2f} s over clean, {nx:+.2f} s without them: "
              f"~{(extra - nx) / exits * 1000:.0f} ms per member death")
    for m in modes[1:]:
        last = [t for t in tries if t["mode"] == m][-1]["check"]
        print(f"\n{m}, last try: {last['results']} result rows for {last['jobs']} jobs; member deaths "
              f"{last['member_deaths']}; run lines by kind {last['poison_runs_by_kind']} "
              f"(jobs by kind {last['poison_jobs_by_kind']}); LOST/ResultLost alongside a member death: "
              f"{last['collateral_result_lost_by_kind']}; status kept, result lost: "
              f"{last['status_kept_result_lost_by_kind']}")
        print("statuses by kind: " + json.dumps(last["statuses"]))
        if last["problems"]:
            print("problems: " + "; ".join(last["problems"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="jobs per drain, poison included (default 10000)")
    parser.add_argument("--fraction", type=float, default=0.01, help="poison share of the n jobs (default 0.01)")
    parser.add_argument("--repeat", type=int, default=2, help="tries of each, alternating (default 2)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds the worker keeps running after done")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--kinds", default="all,no-exit",
                        help="poison tries of each round, comma-separated: all (six kinds), no-exit (five kinds), "
                             f"or one kind ({', '.join(ALL_KINDS)}: the whole poison share of that kind); "
                             "a clean try always comes first (default all,no-exit)")
    parser.add_argument("--baseline", type=Path,
                        help="a directory holding another jobtable package (e.g. `git archive main jobtable`): "
                             "every try is also run with the worker importing it, alternating with this tree's")
    args = parser.parse_args(argv)
    modes = modes_of(args.kinds)
    if args.baseline is not None and not (args.baseline / "jobtable" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no jobtable/__init__.py in it")
    versions = ["this tree"] + (["baseline"] if args.baseline is not None else [])

    tmp = harness.tmpdir()
    logdir = tmp / "logs"
    logdir.mkdir()
    load = os.getloadavg()
    print(f"# jobtable poison drain — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}  (cwd {os.getcwd()})")
    if args.baseline is not None:
        print(f"baseline worker: jobtable of {args.baseline.resolve()}")
    print(f"cores {os.cpu_count()}, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; logs {logdir}\n",
          flush=True)
    system = PoisonSystem("postgresql", tmp)
    tries: list[dict[str, Any]] = []
    all_ok = True
    try:
        for i in range(args.repeat):
            for mode in modes:
                # Both versions back to back for each mode, in turns (the
                # baseline first every other round), so both see one load.
                for version in versions if i % 2 == 0 else versions[::-1]:
                    system.worker_tree = str(args.baseline.resolve()) if version == "baseline" else ""
                    system.fresh()
                    order = mode_order(mode, args.n, args.fraction, args.seed)
                    tag = f"{mode}-{i + 1}" + ("-baseline" if version == "baseline" else "")
                    system.log_tag = tag
                    runs_file = tmp / f"runs-{tag}.txt"
                    runs_file.touch()
                    kinds = fill(system, order, runs_file)
                    figures, workers = drain(system, args.n, logdir, args.timeout,
                                             0 if mode == "clean" else args.settle)
                    checked = verify(system, kinds, runs_file, workers)
                    all_ok &= checked["ok"]
                    load = os.getloadavg()
                    entry = {"mode": mode, "version": version, "try": i + 1, **figures, "load1": load[0],
                             "check": checked}
                    tries.append(entry)
                    print(f"[{mode} {i + 1}{' baseline' if version == 'baseline' else ''}] "
                          f"{figures['jobs_per_s']:,.0f} jobs/s (from start {figures['from_start']:,.0f}), "
                          f"load {load[0]:.2f}, check {'ok' if checked['ok'] else 'FAILED: ' + '; '.join(checked['problems'])}"
                          f", LOST alongside a death: {checked['collateral_result_lost_by_kind']}"
                          f", status kept, result lost: {checked['status_kept_result_lost_by_kind']}",
                          file=sys.stderr, flush=True)
    finally:
        system.cleanup()

    for version in versions:
        summarize(tries, modes, args.n, args.fraction, version)
    print("\nexactly-once: " + ("ok in every try" if all_ok else "FAILED (see above)"))
    load = os.getloadavg()
    print(f"(load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    if args.json:
        args.json.write_text(json.dumps(tries, indent=1, default=str))
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
