"""jobtable quickstart: enqueue jobs into a SQLite file, run the worker, print the results.

    python examples/quickstart/main.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import jobtable
from jobtable.db import engine, migrate, reads_sql

HERE = Path(__file__).resolve().parent
DATABASE = HERE / "quickstart.sqlite3"
URL = f"sqlite:///{DATABASE}"


def main() -> None:
    for leftover in HERE.glob("quickstart.sqlite3*"):
        leftover.unlink()
    (HERE / "flaky.attempted").unlink(missing_ok=True)
    os.environ["JOBTABLE_DATABASE_URL"] = URL
    jobtable.configure(database_url=URL)
    migrate.upgrade(engine.get_engine())  # what `jobtable migrate` does

    from jobs import DaysUntil, Flaky, Greet, SyncAccount

    print("Enqueueing jobs...")
    Greet("Ada").run_in_worker()
    Greet("Grace").run_in_worker(priority=10)  # higher runs first
    DaysUntil(date(2026, 12, 25)).run_in_worker()
    first = SyncAccount(42).run_in_worker()
    second = SyncAccount(42).run_in_worker()  # same key while the first waits
    print(f"  SyncAccount(42) twice: {first.uuid if first else None} and {second}")
    Flaky().run_in_worker()
    jobtable.run_in_worker_many([Greet(name) for name in ("Linus", "Barbara", "Ken")])

    print("Running the worker until the queue is empty...")
    subprocess.run(
        [sys.executable, "-m", "jobtable", "--app", "jobs", "worker", "--burst", "--max-processes", "2", "--stats-every", "0", "--log-level", "warning"],
        cwd=HERE,
        check=True,
    )

    print("\nResults:")
    with engine.connect() as conn:
        rows = reads_sql.list_results(conn, limit=100)
    for row in sorted(rows, key=lambda r: r.id):
        outcome = row.return_value if row.status == "SUCCESSFUL" else f"{row.error_type}: {row.error_message}"
        print(f"  {row.task_name:<18} attempt {row.attempt}  {row.status:<10}  {outcome}")


if __name__ == "__main__":
    main()
