"""Shared plumbing of the benchmark: databases, worker processes, timing.

Everything here is bounded: every wait has a deadline, every loop a count.
Only local services (127.0.0.1) are touched.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
#: Redis database the Celery+Redis runs use (and flush): not 0, which other
#: people on this machine may be using.
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


class BenchError(RuntimeError):
    pass


# -- databases ------------------------------------------------------------------


def pg_conninfo(dbname: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname}"


def pg_url(dbname: str, driver: str = "postgresql+psycopg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def create_pg_database(name: str) -> str:
    """A fresh, empty database ``name`` (dropped first if it exists)."""
    if not name.startswith("bench_"):
        raise BenchError(f"refusing to manage database {name!r}: bench databases start with bench_")
    with psycopg.connect(pg_conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    if not name.startswith("bench_"):
        raise BenchError(f"refusing to drop database {name!r}")
    with psycopg.connect(pg_conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_sqlite_serial = 0


def sqlite_path(tmpdir: Path, name: str) -> Path:
    """A new SQLite file for each fresh start: a process still holding the
    previous file open (a pooled connection) can never write into the new one."""
    global _sqlite_serial
    _sqlite_serial += 1
    path = tmpdir / f"{name}-{_sqlite_serial}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


# -- worker processes ----------------------------------------------------------------


def bench_env(**extra: str) -> dict[str, str]:
    """Environment of a worker process: bench/ importable, peers' noise off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the benchmark (bench/.venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Worker:
    """A worker command started in its own process group, so that stopping it
    stops its children (prefork pools) too -- and nothing else."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> Worker:
        log = open(self.log_path, "wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=BENCH_DIR
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while a child lingers: clean the group up.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def group_cpu_seconds(workers: list[Worker], reaped: bool = False) -> float:
    """User+system CPU seconds used so far by every live process of the
    workers' process groups (less sensitive to other load than wall time);
    ``reaped``: with what their dead children used (cutime, cstime) too."""
    groups = {w.proc.pid for w in workers if w.proc is not None}
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "pid (comm)": state ppid pgrp ... utime(12th) stime(13th)
        if int(fields[2]) in groups:
            total += int(fields[11]) + int(fields[12])
            if reaped:
                total += int(fields[13]) + int(fields[14])
    return total / ticks


def _proc_cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def pg_backend_cpu_seconds(dbname: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to
    ``dbname`` (the server runs on this machine: its processes are in /proc)."""
    with psycopg.connect(pg_conninfo("postgres"), autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,))]
    return sum(_proc_cpu_ticks(pid) for pid in pids) / os.sysconf("SC_CLK_TCK")


def start_workers(commands: list[list[str]], env: dict[str, str], logdir: Path, name: str) -> list[Worker]:
    return [
        Worker(cmd, env, logdir / f"{name}-{i}.log").start() for i, cmd in enumerate(commands)
    ]


def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        w.stop()


# -- waiting and timing ----------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.005, what: str = "condition",
    workers: list[Worker] | None = None,
) -> float:
    """Poll ``predicate`` until true; returns the perf_counter time it became
    true.  Fails after ``timeout`` seconds or when a worker died."""
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        for w in workers or ():
            if not w.alive():
                raise BenchError(f"worker exited ({w.proc.returncode if w.proc else '?'}) while waiting for {what}:\n{w.tail()}")
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- latency records -------------------------------------------------------------------
# A latency job appends "<sent> <started>" (time.time() of both) to a file named
# by BENCH_LATENCY_FILE.  O_APPEND writes of one short line are atomic, so the
# two worker processes can share the file; the harness only counts lines.


def latency_file(tmpdir: Path, name: str) -> Path:
    path = tmpdir / f"latency-{name}.txt"
    path.unlink(missing_ok=True)
    path.touch()
    return path


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def read_latencies(path: Path) -> list[float]:
    """Start - enqueue, in milliseconds, of the recorded jobs (warm-up jobs,
    whose sent time is negative, excluded)."""
    out = []
    for line in path.read_text().splitlines():
        sent, started = (float(x) for x in line.split()[:2])
        if sent > 0:
            out.append((started - sent) * 1000)
    return out


def send_paced(send: Callable[[float], Any], n: int, interval: float) -> list[float]:
    """Call ``send(time.time())`` ``n`` times, one every ``interval`` seconds
    (on a fixed schedule, so a slow send does not shift the later ones).
    Returns how long each send took, in milliseconds."""
    t0 = time.perf_counter()
    took = []
    for i in range(n):
        target = t0 + i * interval
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter()
        send(time.time())
        took.append((time.perf_counter() - start) * 1000)
    return took


@dataclass
class Result:
    system: str
    backend: str
    scenario: str
    value: float | None = None
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="jobtable-bench-"))
