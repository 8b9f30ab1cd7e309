"""A Celery project mid-migration, run end to end on SQLite with one command:

    python examples/celery_midway/main.py

It migrates the database, sends Celery tasks and enqueues Jobs into the same
queue, runs a real Celery worker and jobtable's native worker side by side
until every result is in, and prints who ran what.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATABASE = HERE / "shop.sqlite3"
URL = f"sqlite:///{DATABASE}"


def main() -> int:
    os.chdir(HERE)
    for leftover in HERE.glob("shop.sqlite3*"):
        leftover.unlink()
    state = HERE / "state"
    state.mkdir(exist_ok=True)
    for marker in state.iterdir():
        marker.unlink()
    os.environ["JOBTABLE_DATABASE_URL"] = URL
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    sys.path.insert(0, str(HERE))
    jobtable = [sys.executable, "-m", "jobtable", "--app", "proj.jobs"]

    subprocess.run([*jobtable, "migrate"], env=env, check=True, capture_output=True)

    from celery import chain

    from proj.celery import app
    from proj.jobs import NightlyReportJob, ShipOrderJob
    from proj.tasks import charge_card, notify, price_order

    # Before any worker runs, so the first ShipOrderJob(7) is still waiting
    # when the second one asks for its concurrency key.
    print("Enqueueing Jobs before any worker runs...")
    jobs = {f"ShipOrderJob({n})": ShipOrderJob(n).run_in_worker() for n in (7, 8)}
    duplicate = ShipOrderJob(7).run_in_worker()
    print(f"  ShipOrderJob(7) again while the first waits: {duplicate}")

    print("Starting a Celery worker (it runs the Jobs too: register_jobs)...")
    logs = HERE / "state"
    celery_log = logs / "celery.log"
    celery_worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "proj.celery", "worker", "-P", "threads", "-c", "2", "-Q", "default",
         "-l", "info", "-n", f"celery-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
        env=env, stdout=celery_log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while " ready." not in celery_log.read_text() and celery_worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if celery_worker.poll() is not None or " ready." not in celery_log.read_text():
        print(celery_log.read_text())
        raise SystemExit("the Celery worker did not start")

    print("Sending Celery tasks into the same queue...")
    sent = {
        "price_order(7, 3)": price_order.delay(7, 3),
        "charge_card(7, 757)": charge_card.delay(7, 757),
        "price_order(8, 1) | notify": chain(price_order.s(8, 1), notify.s()).delay(),
    }
    jobs["NightlyReportJob() by hand"] = NightlyReportJob().run_in_worker()

    print("Starting the native worker (it runs the Celery tasks too: --celery-app) in burst mode...")
    native_worker = subprocess.Popen(
        [*jobtable, "worker", "--celery-app", "proj.celery:app", "--burst", "--max-processes", "2",
         "--log-level", "warning"],
        env=env, stdout=(logs / "native.log").open("w"), stderr=subprocess.STDOUT,
    )
    try:
        results = {label: r.get(timeout=60) for label, r in sent.items()}
        results.update({label: app.AsyncResult(r.uuid).get(timeout=60) for label, r in jobs.items()})
    finally:
        celery_worker.send_signal(signal.SIGTERM)
        celery_worker.wait(timeout=30)
        native_worker.wait(timeout=60)

    from jobtable.db import engine, reads_sql

    with engine.connect() as conn:
        rows = reads_sql.list_results(conn, limit=100)
    ran_on = {}
    for row in rows:
        ran_on[row.task_id] = "native worker" if (row.worker_id or "").startswith("native:") else "Celery worker"
    print("\nResults:")
    ids = {label: r.id for label, r in sent.items()} | {label: r.uuid for label, r in jobs.items()}
    for label, value in results.items():
        print(f"  {label:<28} -> {value!r}  [{ran_on.get(ids[label], '?')}]")
    print(f"\nAttempts recorded: {len(rows)} (charge_card retried once)")

    print("\nThe old beat schedule, now jobtable schedules (`jobtable schedule`):")
    out = subprocess.run([*jobtable, "schedule"], env=env, check=True, capture_output=True, text=True).stdout
    print("\n".join("  " + line for line in out.strip().splitlines()))
    print("\nAll done.")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.1f}s)")
    sys.exit(code)
