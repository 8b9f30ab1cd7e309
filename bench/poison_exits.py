"""Poison drain, ``os._exit`` only: what one member death costs a drain.

    .venv/bin/python bench/poison_exits.py -n 5000 --exits 0,16 --repeat 2

Drains ``n`` no-ops with ``k`` ``os._exit`` jobs spread evenly (and no other
poison), for each ``k`` of ``--exits`` in turn, ``--repeat`` rounds, with the
worker and checks of ``poison.py`` (fresh PostgreSQL database per drain);
prints each drain's seconds (first finished job to last) and, per ``k``, the
best one and its excess over ``k = 0`` per death.  Run it with
``PYTHONPATH=<another jobtable tree>`` to measure another version under the
same load (alternate the two).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import poison  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--exits", default="0,16", help="comma-separated numbers of os._exit jobs")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline", type=Path,
                        help="a directory holding another jobtable package: each drain is also run with the "
                             "worker importing it, right after or before this tree's (in turns)")
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "jobtable" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no jobtable/__init__.py in it")
    versions = ["this tree"] + (["baseline"] if args.baseline is not None else [])
    ks = [int(k) for k in args.exits.split(",")]
    tmp = harness.tmpdir()
    logdir = tmp / "logs"
    logdir.mkdir()
    import jobtable

    print(f"jobtable {Path(jobtable.__file__).parent}; load {os.getloadavg()[0]:.1f}", flush=True)
    if args.baseline is not None:
        print(f"baseline worker: jobtable of {args.baseline.resolve()}", flush=True)
    system = poison.PoisonSystem("postgresql", tmp)
    seconds: dict[tuple[str, int], list[float]] = {(v, k): [] for v in versions for k in ks}
    cpu: dict[tuple[str, int], list[float]] = {(v, k): [] for v in versions for k in ks}
    ok = True
    try:
        for r in range(args.repeat):
            for k in ks:
                for version in versions if r % 2 == 0 else versions[::-1]:
                    system.worker_tree = str(args.baseline.resolve()) if version == "baseline" else ""
                    system.fresh()
                    order = ["noop"] * args.n
                    for i in range(k):
                        order[(i * args.n) // k + args.n // (2 * k)] = "os-exit"
                    system.log_tag = f"exits{k}-{r}" + ("-baseline" if version == "baseline" else "")
                    runs = tmp / f"runs-{system.log_tag}"
                    runs.touch()
                    kinds = poison.fill(system, order, runs)
                    figures, workers = poison.drain(system, args.n, logdir, 120, 0.5)
                    checked = poison.verify(system, kinds, runs, workers)
                    ok &= checked["ok"]
                    seconds[(version, k)].append(figures["drain_s"])
                    cpu[(version, k)].append(figures["all_worker_cpu_s"] + figures["all_db_cpu_s"])
                    print(f"{version}: k={k} round {r + 1}: drain {figures['drain_s']:.3f} s, "
                          f"CPU worker {figures['all_worker_cpu_s']:.2f} s + its backends {figures['all_db_cpu_s']:.2f} s "
                          f"({figures['new_backends']} new backends: {figures['new_backends_cpu_s']:.2f} s), "
                          f"load {os.getloadavg()[0]:.1f}, "
                          f"check {'ok' if checked['ok'] else 'FAILED: ' + '; '.join(checked['problems'])}", flush=True)
    finally:
        system.cleanup()
    for version in versions:
        base = min(seconds[(version, ks[0])])
        for k in ks:
            best = min(seconds[(version, k)])
            per = f", {(best - base) / k * 1000:.0f} ms per death over k={ks[0]}" if k else ""
            # CPU: the median, less sensitive to other load than wall time.
            c = sorted(cpu[(version, k)])[len(cpu[(version, k)]) // 2]
            c0 = sorted(cpu[(version, ks[0])])[len(cpu[(version, ks[0])]) // 2]
            cper = f", {(c - c0) / k * 1000:.0f} ms CPU per death" if k else ""
            print(f"{version}: k={k}: best {best:.3f} s (all {', '.join(f'{s:.3f}' for s in seconds[(version, k)])}){per}; "
                  f"CPU (worker + its backends) median {c:.2f} s{cper}")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
