"""Kill/restart (issue 12, section 7): throughput and exactness while the
worker's whole process group is SIGKILLed every 3 s and PostgreSQL restarts
once half way, beside a calm run of the same jobs.

    .venv/bin/python bench/killrestart.py                         # native + Celery, calm and kill, once
    .venv/bin/python bench/killrestart.py --repeat 2 --systems native --json out.json

Everything runs on a private PostgreSQL cluster this script creates
(``pgcluster.py``: initdb into a temp dir, port 5439, socket in /tmp) and
removes at the end; the shared server on 5432 is never touched.

Each try is a fresh database ``bench_kill`` filled with N (5,000) jobs that
each sleep 1-20 ms (uniform, fixed seed), drained by 2 worker processes:

- native: ``jobtable --app benchapps.kill_jobs worker --max-processes 2 --queue bench``
  (the job has 5 retries, no delay: a job running when its worker dies is
  LOST and runs again);
- celery: ``celery -A benchapps.kill_celery_app worker --pool prefork --concurrency 2``
  over ``jobtable+postgresql+psycopg://``, ``task_acks_late``.

A calm try just drains.  A kill try SIGKILLs the worker's process group
every 3 s (on a fixed schedule from the first launch) and starts the same
command again at once, and restarts PostgreSQL (``pg_ctl restart -m fast``)
when half the jobs have ended.  Calm and kill tries alternate.

Throughout both, a separate "web" process enqueues one more job (0 ms) every
200 ms (``run_in_worker()``; ``.delay()`` for Celery), each with its own token.
Around the restart it pauses: the bench raises a flag, waits until the client
says it stopped, restarts the server, drops the flag -- so its first call
after the restart goes out on a pooled connection the server closed, and must
succeed (``db/retry.py``).  Any failed call is counted as an error.

Every job appends ``S token time pid`` before and ``E token time pid`` after
its work (``benchapps/runlog.py``): runs are counted from these lines,
independently of the queue.  Reported:

- throughput: N / (last job's end - first launch), and 99 % of N / (the
  99th-percentile job's end - first launch); kill / calm;
- lost: jobs with no end line (never ran, or never finished);
- duplicates: jobs with more than one start, split into those whose earlier
  runs were all cut off by a kill (a start, no end, a kill after the start:
  "really running when the kill came") and the others (an earlier run had
  ended: ran twice);
- native only: the result rows by status (``ResultLost`` = ran once, its
  result died in an unwritten batch) and rows left in the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402

import harness  # noqa: E402
import pgcluster  # noqa: E402

PORT = 5439
DB = "bench_kill"
QUEUE = "bench"
KILL_EVERY = 3.0
#: The web client's pace: a few jobs a second, so that its jobs are a small
#: share of the load (5 % of the calm drain) while its calls span the restart.
PROBE_EVERY = 0.2


def db_url(driver: str = "postgresql+psycopg") -> str:
    return f"{driver}://postgres@127.0.0.1:{PORT}/{DB}"


def conninfo(dbname: str = DB) -> str:
    return f"host=127.0.0.1 port={PORT} user=postgres dbname={dbname}"


# -- the systems -----------------------------------------------------------------------


class Native:
    name = "native"

    def command(self) -> list[str]:
        return [harness.venv_bin("jobtable"), "--app", "benchapps.kill_jobs", "worker", "--max-processes", "2",
                "--queue", QUEUE]

    def env(self, runs_file: Path) -> dict[str, str]:
        return harness.bench_env(BENCH_RUNS_FILE=str(runs_file), JOBTABLE_DATABASE_URL=db_url())

    def fill(self, plan: list[tuple[str, float]]) -> None:
        import jobtable
        from benchapps.kill_jobs import Work
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        db_engine.reset_engines()
        os.environ["JOBTABLE_DATABASE_URL"] = db_url()
        jobtable.configure(database_url=db_url())
        upgrade(db_engine.get_engine())
        got = jobtable.run_in_worker_many([Work(token, ms) for token, ms in plan], queue=QUEUE)
        if any(r is None for r in got):
            raise harness.BenchError("an enqueue was skipped")
        db_engine.reset_engines()


class CeleryTransport:
    name = "celery"
    app: Any = None

    def command(self) -> list[str]:
        return [harness.venv_bin("celery"), "-A", "benchapps.kill_celery_app", "worker", "--pool", "prefork",
                "--concurrency", "2", "--queues", QUEUE, "--without-gossip", "--without-mingle",
                "--without-heartbeat", "--loglevel", "WARNING"]

    def env(self, runs_file: Path) -> dict[str, str]:
        return harness.bench_env(BENCH_RUNS_FILE=str(runs_file), BENCH_BROKER_URL="jobtable+" + db_url())

    def fill(self, plan: list[tuple[str, float]]) -> None:
        from benchapps import kill_celery_app
        from jobtable.db import engine as db_engine
        from jobtable.db.migrate import upgrade

        db_engine.reset_engines()
        engine = db_engine.create_jobtable_engine(db_url())
        upgrade(engine)
        engine.dispose()
        if self.app is None:  # the module's app: a second one would register bench.work twice
            self.app = kill_celery_app.app
        task = self.app.tasks["bench.work"]
        with self.app.producer_or_acquire() as producer:
            for token, ms in plan:
                task.apply_async((token, ms), producer=producer)
        self.app.close()  # drops its connection pool (a new one next time): they die with the database
        db_engine.reset_engines()


SYSTEMS = {"native": Native, "celery": CeleryTransport}


# -- the web client (a separate process) --------------------------------------------------


def probe_main(args: argparse.Namespace) -> int:
    """Enqueue one 0 ms job every ``--every`` s until ``--stop`` exists; pause
    while ``--pause`` exists (acknowledged by creating ``--paused``).  One
    line per call on stdout: ``ok|err|none token t_call seconds [error]``,
    and ``resume t`` after each pause."""
    stop, pause, paused = Path(args.stop), Path(args.pause), Path(args.paused)
    if args.system == "native":
        import jobtable
        from benchapps.kill_jobs import Work

        jobtable.configure(database_url=db_url())

        def send(token: str) -> bool:
            return Work(token, 0).run_in_worker() is not None
    else:
        from benchapps.kill_celery_app import app

        task = app.tasks["bench.work"]

        def send(token: str) -> bool:
            task.delay(token, 0)
            return True

    out = sys.stdout
    i = 0
    t0 = time.perf_counter()
    while not stop.exists():
        if pause.exists():
            paused.touch()
            while pause.exists() and not stop.exists():
                time.sleep(0.005)
            paused.unlink(missing_ok=True)
            out.write(f"resume {time.time()!r}\n")
            out.flush()
            t0 = time.perf_counter() - i * args.every
            continue
        token = f"p{i}"
        started = time.time()
        c0 = time.perf_counter()
        try:
            ok = send(token)
            out.write(f"{'ok' if ok else 'none'} {token} {started!r} {time.perf_counter() - c0:.4f}\n")
        except Exception as exc:
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            out.write(f"err {token} {started!r} {time.perf_counter() - c0:.4f} {text}\n")
        out.flush()
        i += 1
        delay = t0 + i * args.every - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return 0


class Probe:
    def __init__(self, system: str, tmp: Path, tag: str) -> None:
        self.stop_file = tmp / f"probe-{tag}.stop"
        self.pause_file = tmp / f"probe-{tag}.pause"
        self.paused_file = tmp / f"probe-{tag}.paused"
        self.out = tmp / f"probe-{tag}.out"
        self.err = tmp / f"probe-{tag}.err"
        cmd = [sys.executable, str(Path(__file__).resolve()), "probe", "--system", system,
               "--stop", str(self.stop_file), "--pause", str(self.pause_file), "--paused", str(self.paused_file),
               "--every", str(PROBE_EVERY)]
        self.env: dict[str, str] = {}
        self.cmd = cmd

    def start(self, env: dict[str, str]) -> None:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=err, cwd=harness.BENCH_DIR)

    def pause(self, timeout: float = 10.0) -> None:
        self.pause_file.touch()
        deadline = time.perf_counter() + timeout
        while not self.paused_file.exists():  # the client stopped between two calls
            if time.perf_counter() > deadline or self.proc.poll() is not None:
                raise harness.BenchError(f"the web client did not pause: {self.err.read_text()[-500:]}")
            time.sleep(0.002)

    def resume(self) -> None:
        self.pause_file.unlink(missing_ok=True)

    def stop(self) -> list[str]:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.returncode:
            raise harness.BenchError(f"the web client failed ({self.proc.returncode}): {self.err.read_text()[-800:]}")
        return self.out.read_text().splitlines()


# -- the run log ------------------------------------------------------------------------


@dataclass
class RunLog:
    """Incremental reader of the S/E lines."""

    path: Path
    offset: int = 0
    rest: bytes = b""
    starts: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    ends: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))

    def read(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            kind, token, t, pid = line.decode().split()
            (self.starts if kind == "S" else self.ends)[token].append((float(t), int(pid)))

    def ended(self, prefix: str = "j") -> int:
        return sum(1 for t in self.ends if t.startswith(prefix))


# -- one try -----------------------------------------------------------------------------


def make_plan(n: int, seed: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    return [(f"j{i}", round(rng.uniform(1.0, 20.0), 2)) for i in range(n)]


def fresh_database() -> None:
    with psycopg.connect(conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')


def run_try(system: Any, cluster: pgcluster.PrivateCluster, plan: list[tuple[str, float]], *, kill: bool,
            tmp: Path, tag: str, timeout: float, settle: float, stall: float) -> dict[str, Any]:
    n = len(plan)
    fresh_database()
    system.fill(plan)
    runs_file = tmp / f"runs-{tag}.txt"
    runs_file.write_bytes(b"")
    env = system.env(runs_file)
    log = RunLog(runs_file)
    probe = Probe(system.name, tmp, tag)
    probe.start(env)
    kills: list[float] = []
    restart: dict[str, Any] = {}
    workers: list[harness.Worker] = []

    launches: list[float] = []

    def launch() -> harness.Worker:
        launches.append(time.time())
        w = harness.Worker(system.command(), env, tmp / f"worker-{tag}-{len(workers)}.log").start()
        workers.append(w)
        return w

    def restart_server() -> None:
        try:
            restart["pause_at"] = time.time()
            probe.pause()
            restart["down_at"] = time.time()
            restart["seconds"] = cluster.restart("fast")
            restart["up_at"] = time.time()
        except Exception as exc:  # reported, and fails the try
            restart["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            probe.resume()

    t0 = time.time()
    worker = launch()
    restarter: threading.Thread | None = None
    next_kill = time.perf_counter() + KILL_EVERY
    deadline = time.perf_counter() + timeout
    last_ended, progress_at, stalled = 0, time.perf_counter(), False
    try:
        while True:
            log.read()
            ended = log.ended()
            if ended >= n:
                break
            now = time.perf_counter()
            if ended != last_ended:
                last_ended, progress_at = ended, now
            elif now - progress_at > stall:
                # Jobs that will never end (e.g. quarantined): stop and count them lost.
                stalled = True
                break
            if now > deadline:
                raise harness.BenchError(f"timed out: {log.ended()} of {n} jobs ended\n{worker.tail()}")
            if kill and restarter is None and log.ended() >= n // 2:
                restarter = threading.Thread(target=restart_server, daemon=True)
                restarter.start()
            if kill and now >= next_kill:
                kills.append(time.time())
                os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()
                worker = launch()
                next_kill += KILL_EVERY
            elif not worker.alive():
                raise harness.BenchError(f"worker exited ({worker.proc.returncode}):\n{worker.tail()}")
            time.sleep(0.005)
        done_at = time.time()
        if restarter is not None:
            restarter.join(timeout=90)
        probe_lines = probe.stop()
        # Let the probe jobs sent last finish, then keep the worker running a
        # little longer, so that a re-run would happen and show.
        sent = [line.split()[1] for line in probe_lines if line.split()[0] in ("ok", "none")]
        wait_until = time.perf_counter() + 30
        while time.perf_counter() < wait_until:
            log.read()
            if all(t in log.ends for t in sent):
                break
            time.sleep(0.01)
        time.sleep(settle)
        log.read()
    finally:
        for w in workers:
            w.stop(grace=5.0)
        if probe.proc.poll() is None:
            probe.proc.kill()
    r = analyse(system, plan, log, kills, restart, probe_lines, t0, done_at, workers, launches)
    r["stalled_after_s"] = stall if stalled else None
    return r


def analyse(system: Any, plan: list[tuple[str, float]], log: RunLog, kills: list[float], restart: dict[str, Any],
            probe_lines: list[str], t0: float, done_at: float, workers: list[harness.Worker],
            launches: list[float]) -> dict[str, Any]:
    n = len(plan)
    # From each launch to the first job start after it (before the next kill):
    # interpreter start-up, imports, connecting, the first claim.
    all_starts = sorted(s for starts in log.starts.values() for s, _ in starts)
    startup = []
    for i, at in enumerate(launches):
        until = kills[i] if i < len(kills) else float("inf")
        first = next((s for s in all_starts if s >= at), None)
        startup.append(first - at if first is not None and first < until else None)
    # The share of the run's wall time in which a worker was up and running
    # jobs (from its first job start to its kill, or to the end): what is
    # left once start-up is taken out of every kill window.
    end = max((e for ends in log.ends.values() for e, _ in ends), default=t0)
    working = sum(max(0.0, min(kills[i] if i < len(kills) else end, end) - (at + up))
                  for i, (at, up) in enumerate(zip(launches, startup)) if up is not None)
    tokens = [t for t, _ in plan]
    first_end = sorted(min(t for t, _ in log.ends[tok]) for tok in tokens if tok in log.ends)
    wall = first_end[-1] - t0 if first_end else float("nan")
    k99 = max(1, int(0.99 * n))
    t99 = first_end[k99 - 1] - t0 if len(first_end) >= k99 else float("nan")

    def classify(tok: str) -> tuple[int, int, list[float]]:
        """(runs, runs cut off by a kill, gaps between each cut-off start and
        the kill that cut it)."""
        starts = sorted(log.starts.get(tok, []))
        ends = log.ends.get(tok, [])
        cut, gaps = 0, []
        for i, (s, pid) in enumerate(starts[:-1]):
            ended = any(p == pid and e >= s for e, p in ends)
            nxt = starts[i + 1][0]
            kill_between = [k for k in kills if s <= k <= nxt]
            if not ended and kill_between:
                cut += 1
                gaps.append(kill_between[0] - s)
        return len(starts), cut, gaps

    lost_never_ran = [t for t in tokens if t not in log.starts]
    lost_unfinished = [t for t in tokens if t in log.starts and t not in log.ends]
    dup_cut, dup_other, dup_examples = 0, 0, []
    cut_gaps: list[float] = []
    other_gaps: list[float] = []
    extra_runs = 0
    for tok in [*tokens, *[t for t in log.starts if t.startswith("p")]]:
        runs, cut, gaps = classify(tok)
        if runs <= 1:
            continue
        extra_runs += runs - 1
        cut_gaps += gaps
        if cut == runs - 1:
            dup_cut += 1
        else:
            dup_other += 1
            # How long before the next kill its first run had ended (the
            # window in which its result or ack was not yet written).
            first_end_t = min((e for e, _ in log.ends.get(tok, [])), default=None)
            nxt = [k for k in kills if first_end_t is not None and k >= first_end_t]
            if nxt and first_end_t is not None:
                other_gaps.append(nxt[0] - first_end_t)
            if len(dup_examples) < 5:
                ends = sorted(log.ends.get(tok, []))
                starts = sorted(log.starts[tok])
                near = [round(k - starts[0][0], 3) for k in kills if starts[0][0] - 1 <= k <= starts[-1][0]]
                dup_examples.append({"token": tok, "starts": [round(s - t0, 3) for s, _ in starts],
                                     "ends": [round(e - t0, 3) for e, _ in ends], "kills_after_first_start": near})
    # Jobs running at each kill (a start before it, no end before it, same pid).
    running_at_kill = []
    for i, k in enumerate(kills):
        since = kills[i - 1] if i else t0
        running_at_kill.append(sum(
            1 for tok, starts in log.starts.items() for s, pid in starts
            if since < s <= k and not any(p == pid and e >= s for e, p in log.ends.get(tok, []))
        ))

    probe = probe_report(probe_lines, log, restart)
    out: dict[str, Any] = {
        "jobs": n,
        "wall_s": wall,
        "jobs_ended": len(first_end),
        "jobs_per_s": len(first_end) / wall,
        "t99_s": t99,
        "jobs_per_s_99": k99 / t99,
        "kills": len(kills),
        "worker_launches": len(workers),
        "startup_s": [None if x is None else round(x, 3) for x in startup],
        "launches_without_a_job": sum(1 for x in startup if x is None),
        "working_share": working / (end - t0) if end > t0 else float("nan"),
        "restart": {k: (v - t0 if k.endswith("_at") else v) for k, v in restart.items()},
        "lost_never_ran": len(lost_never_ran),
        "lost_unfinished": len(lost_unfinished),
        "lost_examples": (lost_never_ran + lost_unfinished)[:5],
        "duplicated_jobs": dup_cut + dup_other,
        "duplicates_cut_by_kill": dup_cut,
        "duplicates_other": dup_other,
        "duplicate_examples": dup_examples,
        "extra_runs": extra_runs,
        "running_at_kills": sum(running_at_kill),
        "running_at_each_kill": running_at_kill,
        "other_end_to_kill_ms": sorted(round(g * 1000, 1) for g in other_gaps),
        "cut_start_to_kill_ms_max": round(max(cut_gaps) * 1000, 1) if cut_gaps else None,
        "probe": probe,
        "done_after_s": done_at - t0,
    }
    out.update(queue_report(system.name))
    return out


def probe_report(lines: list[str], log: RunLog, restart: dict[str, Any]) -> dict[str, Any]:
    calls = [line.split(" ", 4) for line in lines if not line.startswith("resume")]
    errors = [c for c in calls if c[0] == "err"]
    sent = [c[1] for c in calls if c[0] == "ok"]
    runs = Counter({t: len(log.starts.get(t, [])) for t in sent})
    after = [c for c in calls if "up_at" in restart and float(c[2]) >= restart["up_at"]]
    first = after[0] if after else None
    return {
        "calls": len(calls),
        "ok": len(sent),
        "skipped_none": sum(1 for c in calls if c[0] == "none"),
        "errors": len(errors),
        "error_examples": [" ".join(c) for c in errors[:3]],
        "never_ran": sum(1 for t in sent if runs[t] == 0),
        "unfinished": sum(1 for t in sent if t not in log.ends),
        "ran_more_than_once": sum(1 for t in sent if runs[t] > 1),
        "first_after_restart": None if first is None else {"status": first[0], "seconds": float(first[3])},
        "max_call_s": max((float(c[3]) for c in calls), default=0.0),
    }


def queue_report(name: str) -> dict[str, Any]:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM jobtable_request").fetchone()[0]
        # The native worker's results; for Celery (no result backend) only
        # what the transport itself recorded, e.g. quarantined messages.
        statuses = {f"{status}/{etype}": count for status, etype, count in conn.execute(
            "SELECT status, coalesce(error_type, '-'), count(*) FROM jobtable_result GROUP BY 1, 2 ORDER BY 1, 2")}
    return {"queue_rows_left": left, "result_rows": statuses}


# -- report ----------------------------------------------------------------------------------


def ok_of(r: dict[str, Any]) -> bool:
    p = r["probe"]
    return (r["lost_never_ran"] + r["lost_unfinished"] == 0 and r["duplicates_other"] == 0
            and p["errors"] == 0 and p["never_ran"] == 0 and p["ran_more_than_once"] == 0 and p["skipped_none"] == 0
            and r["queue_rows_left"] == 0 and "error" not in r["restart"])


def _median(values: list[float | None]) -> str:
    got = sorted(v for v in values if v is not None)
    none = len(values) - len(got)
    return (f"{got[len(got) // 2]:.2f}s" if got else "-") + (f" ({none} launch(es) ran nothing)" if none else "")


def line(tag: str, r: dict[str, Any]) -> str:
    p = r["probe"]
    first = p["first_after_restart"]
    return (f"[{tag}] {r['jobs_per_s']:.1f} jobs/s (99 %: {r['jobs_per_s_99']:.1f}), wall {r['wall_s']:.1f}s, "
            f"kills {r['kills']}, startup median {_median(r['startup_s'])}, working share {r['working_share']:.2f}, running at kills {r['running_at_kills']}, lost {r['lost_never_ran']}+"
            f"{r['lost_unfinished']}, dup {r['duplicates_cut_by_kill']} cut/{r['duplicates_other']} other, "
            f"probe {p['ok']}/{p['calls']} ok, {p['errors']} err, dup {p['ran_more_than_once']}, "
            f"first after restart {first}, restart {r['restart'].get('seconds')}, left {r['queue_rows_left']}, "
            f"results {r['result_rows']}")


def _row(system: str, mode: str, ts: list[dict[str, Any]], calm: list[dict[str, Any]]) -> str:
    best = max(t["jobs_per_s"] for t in ts)
    best99 = max(t["jobs_per_s_99"] for t in ts)
    calm_best = max((t["jobs_per_s"] for t in calm), default=float("nan"))
    calm_best99 = max((t["jobs_per_s_99"] for t in calm), default=float("nan"))
    each = ", ".join("%.0f (%.0f)" % (t["jobs_per_s"], t["jobs_per_s_99"]) for t in ts)
    kills = ", ".join(str(t["kills"]) for t in ts)
    running = ", ".join(str(t["running_at_kills"]) for t in ts)
    lost = ", ".join(str(t["lost_never_ran"] + t["lost_unfinished"]) for t in ts)
    dups = ", ".join("%d / %d" % (t["duplicates_cut_by_kill"], t["duplicates_other"]) for t in ts)
    web = ", ".join("%d, %d, %d" % (t["probe"]["calls"], t["probe"]["errors"], t["probe"]["ran_more_than_once"])
                    for t in ts)
    firsts = [t["probe"]["first_after_restart"] for t in ts if t["probe"]["first_after_restart"]]
    if firsts:
        web += "; first: " + ", ".join("%s %.0f ms" % (f["status"], f["seconds"] * 1000) for f in firsts)
    return (f"| {system} | {mode} | {each} | {best:.0f} | {best99:.0f} | {best / calm_best:.2f} | "
            f"{best99 / calm_best99:.2f} | {kills} | {running} | {lost} | {dups} | {web} |")


def report(tries: list[dict[str, Any]]) -> str:
    out = ["| system | run | tries: jobs/s (to p99) | best jobs/s | best to p99 | vs calm | to p99 vs calm | kills | "
           "running at kills | lost | duplicated (cut by a kill / other) | web client: calls, errors, dup; first after restart |",
           "|---|---|---|---:|---:|---:|---:|---|---|---|---|---|"]
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in tries:
        by[(t["system"], t["mode"])].append(t)
    for system in dict.fromkeys(t["system"] for t in tries):
        for mode in ("calm", "kill"):
            if by.get((system, mode)):
                out.append(_row(system, mode, by[(system, mode)], by.get((system, "calm"), [])))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        p = argparse.ArgumentParser()
        for name in ("--system", "--stop", "--pause", "--paused"):
            p.add_argument(name, required=True)
        p.add_argument("--every", type=float, default=PROBE_EVERY)
        return probe_main(p.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="calm/kill pairs per system (alternating)")
    parser.add_argument("--systems", nargs="+", default=["native", "celery"], choices=sorted(SYSTEMS))
    parser.add_argument("--modes", nargs="+", default=["calm", "kill"], choices=["calm", "kill"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=400.0)
    parser.add_argument("--stall", type=float, default=30.0,
                        help="stop a try when no job ended for this long; the rest count as lost")
    parser.add_argument("--celery-prefetch", type=int, default=4, help="worker_prefetch_multiplier (default 4)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ["BENCH_PREFETCH"] = str(args.celery_prefetch)  # the Celery workers and clients inherit it

    tmp = harness.tmpdir()
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=harness.BENCH_DIR).stdout.strip()
    print(f"# jobtable kill/restart — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {commit}")
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}  (cwd {os.getcwd()})")
    print(f"cores {os.cpu_count()}, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"logs {tmp}\n", flush=True)
    plan = make_plan(args.n, args.seed)
    cluster = pgcluster.PrivateCluster(PORT).create()
    tries: list[dict[str, Any]] = []
    all_ok = True
    systems = {name: SYSTEMS[name]() for name in args.systems}
    try:
        for i in range(args.repeat):
            for name, system in systems.items():
                for mode in args.modes:
                    tag = f"{name}-{mode}-{i + 1}"
                    r = run_try(system, cluster, plan, kill=mode == "kill", tmp=tmp, tag=tag,
                                timeout=args.timeout, settle=args.settle, stall=args.stall)
                    r.update(system=name, mode=mode, attempt=i + 1, load1=os.getloadavg()[0], ok=ok_of(r))
                    all_ok &= r["ok"]
                    tries.append(r)
                    print(line(tag, r) + f", load {r['load1']:.2f}, {'ok' if r['ok'] else 'CHECK FAILED'}",
                          file=sys.stderr, flush=True)
    finally:
        cluster.destroy()
    print(report(tries))
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "commit": commit, "tries": tries}, indent=1, default=str))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
