"""Where the client's CPU goes in jobtable's enqueues on MariaDB (issue 17):
cProfile on the process's CPU clock (``time.process_time``: waiting for the
server counts nothing), the Job API on a fresh ``bench_jobtable`` database.

    PYTHONPATH=$PWD bench/.venv/bin/python bench/mysql_profile.py {single,bulk} [-n N] [--top 30]

Prints the CPU microseconds per job and cProfile's functions by own time and
by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from systems.jobtable_native import JobtableNative  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("single", "bulk"))
    parser.add_argument("-n", type=int, default=0)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    system = JobtableNative("mysql", harness.tmpdir())
    system.fresh()
    n = args.n or (3000 if args.what == "single" else 20000)
    run = system.enqueue_single if args.what == "single" else system.enqueue_bulk
    run(100)  # connections, statement caches, the schema check
    print(f"load average {os.getloadavg()}")
    t0, c0 = time.perf_counter(), time.process_time()
    run(n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"unprofiled: {n / wall:,.0f} jobs/s, client CPU {cpu / n * 1e6:.1f} us/job")
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    run(n)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"profiled: client CPU {total / n * 1e6:.1f} us/job (cProfile's own overhead included)")
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())
    system.cleanup()


if __name__ == "__main__":
    main()
