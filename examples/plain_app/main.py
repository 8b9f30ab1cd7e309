"""A Plain-style app on jobtable, run with one command on the SQLite default:

    python examples/plain_app/main.py

Settings come from this directory's pyproject.toml ([tool.jobtable]): the
commands below run here, with no JOBTABLE_* variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def jobtable(*args: str) -> str:
    """Run a `jobtable` command in the app's directory; returns its output."""
    out = subprocess.run([sys.executable, "-m", "jobtable", *args], cwd=HERE, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"jobtable {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def main() -> None:
    os.chdir(HERE)  # the nearest pyproject.toml is the app's
    sys.path.insert(0, str(HERE))
    for leftover in HERE.glob("plain_app.sqlite3*"):
        leftover.unlink()
    state = HERE / "state"
    state.mkdir(exist_ok=True)
    for path in state.iterdir():
        path.unlink()
    for name in ("a", "b"):
        (state / f"{name}.tmp").touch()

    jobtable("migrate")

    from app.jobs import ImportFeed, RebuildSearchIndex, SendWelcomeEmail

    print("Enqueueing...")
    first = SendWelcomeEmail(1).run_in_worker()
    again = SendWelcomeEmail(1).run_in_worker()
    SendWelcomeEmail(2).run_in_worker(priority=5)
    print(f"  SendWelcomeEmail(1) twice: {'enqueued' if first else None} then {'enqueued' if again else None}")
    one = RebuildSearchIndex().run_in_worker()
    two = RebuildSearchIndex().run_in_worker()
    print(f"  RebuildSearchIndex twice: {'enqueued' if one else None} then {'enqueued' if two else None}")
    ImportFeed("https://example.com/feed.xml").run_in_worker()

    print("Running the worker until nothing is due...")
    jobtable("worker", "--burst", "--queue", "default", "--queue", "slow", "--max-processes", "2",
             "--log-level", "warning")

    from jobtable.db import engine, reads_sql

    print("\nResults:")
    with engine.connect() as conn:
        rows = reads_sql.list_results(conn, limit=100)
    for row in sorted(rows, key=lambda r: r.id):
        outcome = row.return_value if row.status == "SUCCESSFUL" else f"{row.error_type}: {row.error_message}"
        print(f"  {row.task_name:<28} attempt {row.attempt}  {row.status:<10}  {outcome}")

    print("\nChores (`jobtable chores run`):")
    for line in jobtable("chores", "run", "--name", "app.clear_tmp_files").strip().splitlines():
        print("  " + line)

    print("\nSchedule (`jobtable schedule`):")
    for line in jobtable("schedule").strip().splitlines():
        print("  " + line)


if __name__ == "__main__":
    main()
