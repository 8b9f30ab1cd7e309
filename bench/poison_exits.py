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
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.exits.split(",")]
    tmp = harness.tmpdir()
    logdir = tmp / "logs"
    logdir.mkdir()
    import jobtable

    print(f"jobtable {Path(jobtable.__file__).parent}; load {os.getloadavg()[0]:.1f}", flush=True)
    system = poison.PoisonSystem("postgresql", tmp)
    seconds: dict[int, list[float]] = {k: [] for k in ks}
    try:
        for r in range(args.repeat):
            for k in ks:
                system.fresh()
                order = ["noop"] * args.n
                for i in range(k):
                    order[(i * args.n) // k + args.n // (2 * k)] = "os-exit"
                system.log_tag = f"exits{k}-{r}"
                runs = tmp / f"runs-{k}-{r}"
                runs.touch()
                kinds = poison.fill(system, order, runs)
                figures, workers = poison.drain(system, args.n, logdir, 120, 0.5)
                checked = poison.verify(system, kinds, runs, workers)
                seconds[k].append(figures["drain_s"])
                print(f"k={k} round {r + 1}: drain {figures['drain_s']:.2f} s, load {os.getloadavg()[0]:.1f}, "
                      f"check {'ok' if checked['ok'] else 'FAILED: ' + '; '.join(checked['problems'])}", flush=True)
    finally:
        system.cleanup()
    base = min(seconds[ks[0]])
    for k in ks:
        best = min(seconds[k])
        per = f", {(best - base) / k * 1000:.0f} ms per death over k={ks[0]}" if k else ""
        print(f"k={k}: best {best:.2f} s (all {', '.join(f'{s:.2f}' for s in seconds[k])}){per}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
