"""Profile a worker (jobtable's by default; any system of run.py) while it drains: py-spy samples every process of
the worker (supervisor and pool members) and this prints the functions where
the members spend their time.

    bench/.venv/bin/python bench/profile_worker.py [--system celery-jobtable] [--backend postgresql|sqlite] [-n 40000] [--seconds 4]

Writes the raw collapsed stacks next to the summary (path printed), for
flame graphs (``py-spy`` raw format / speedscope).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def summarize(raw: Path, top: int) -> str:
    """Inclusive and self sample counts per function from py-spy's raw
    (collapsed) output: "frame;frame;frame count" per line."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        # Idle waiting is not where the work goes: keep it visible but apart.
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples", "", "inclusive (share of all samples):"]
    for frame, n in inclusive.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%  {frame}")
    out += ["", "self:"]
    for frame, n in own.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%  {frame}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", default="jobtable", help="a --systems name of run.py (default jobtable)")
    parser.add_argument("--backend", default="postgresql", choices=("postgresql", "sqlite"))
    parser.add_argument("-n", type=int, default=40_000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--rate", type=int, default=250)
    args = parser.parse_args()

    tmp = harness.tmpdir()
    from run import system_classes

    system = system_classes()[args.system]()(args.backend, tmp)
    system.fresh()
    system.fill(args.n)
    workers = system.start_workers(tmp)
    raw = tmp / "worker-profile.txt"
    try:
        harness.wait_until(lambda: system.remaining() < args.n, timeout=60, what="the first job", workers=workers)
        subprocess.run(
            [harness.venv_bin("py-spy"), "record", "--pid", str(workers[0].proc.pid), "--subprocesses",
             "--duration", str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw",
             "--output", str(raw), "--nonblocking"],
            check=True, timeout=args.seconds + 60, capture_output=True,
        )
        left = system.remaining()
    finally:
        harness.stop_workers(workers)
    print(f"drained {args.n - left} of {args.n} jobs while profiling; raw stacks: {raw}")
    print(summarize(raw, args.top))
    system.cleanup()


if __name__ == "__main__":
    main()
