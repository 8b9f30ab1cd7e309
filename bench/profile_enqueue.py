"""Profile jobtable's enqueue paths in-process with pyinstrument.

    bench/.venv/bin/python bench/profile_enqueue.py {single,bulk} [--backend postgresql|sqlite] [-n N]

Prints pyinstrument's text report (the functions where the time goes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from systems.jobtable_native import JobtableNative  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("single", "bulk"))
    parser.add_argument("--backend", default="postgresql", choices=("postgresql", "sqlite", "mysql"))
    parser.add_argument("-n", type=int, default=0)
    parser.add_argument("--html", type=Path)
    args = parser.parse_args()
    from pyinstrument import Profiler

    system = JobtableNative(args.backend, harness.tmpdir())
    system.fresh()
    n = args.n or (3000 if args.what == "single" else 20000)
    run = system.enqueue_single if args.what == "single" else system.enqueue_bulk
    run(50)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    run(n)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=bool(__import__("os").environ.get("SHOW_ALL"))))
    if args.html:
        args.html.write_text(profiler.output_html())
    system.cleanup()


if __name__ == "__main__":
    main()
