"""The README's quickstart runs and prints its results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart" / "main.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "SyncAccount(42) twice:" in out and out.split("SyncAccount(42) twice:")[1].split("\n")[0].endswith("and None")
    lines = out.split("Results:")[1].strip().splitlines()
    assert len(lines) == 9
    assert sum("SUCCESSFUL" in line for line in lines) == 8
    assert any('"Hello, Grace!"' in line for line in lines)
    assert any("jobs.DaysUntil" in line and line.endswith("358") for line in lines)
    assert any("jobs.Flaky" in line and "attempt 1  ERRORED" in line for line in lines)
    assert any("jobs.Flaky" in line and "attempt 2  SUCCESSFUL" in line for line in lines)


def _example_env() -> dict[str, str]:
    # The examples use their own SQLite files: no database of the test run.
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}


def test_celery_midway() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "celery_midway" / "main.py")],
        capture_output=True,
        text=True,
        timeout=180,
        env=_example_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "ShipOrderJob(7) again while the first waits: None" in text
    results = dict(
        line.strip().split(" -> ", 1) for line in text.split("Results:")[1].split("Attempts")[0].strip().splitlines()
    )
    results = {k.strip(): v for k, v in results.items()}
    assert results["price_order(7, 3)"].startswith("757  [")
    assert results["charge_card(7, 757)"].startswith("'charged 757 cents for order 7 (retries=1)'")
    assert results["price_order(8, 1) | notify"].startswith("'notified: 258'")
    assert results["ShipOrderJob(7)"].startswith("'shipped order 7'")
    assert results["NightlyReportJob() by hand"].startswith("'nightly report built'")
    assert all(v.endswith(("[Celery worker]", "[native worker]")) for v in results.values()), results
    assert "Attempts recorded: 8" in text
    schedule = text.split("jobtable schedule`):")[1]
    assert "proj.jobs.CleanupJob" in schedule and "*/15 * * * *" in schedule
    assert "proj.jobs.NightlyReportJob" in schedule and "0 2 * * *" in schedule


def test_plain_app() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plain_app" / "main.py")],
        capture_output=True,
        text=True,
        timeout=180,
        env=_example_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "SendWelcomeEmail(1) twice: enqueued then None" in text  # concurrency key
    assert "RebuildSearchIndex twice: enqueued then None" in text  # should_enqueue
    results = text.split("Results:")[1].split("Chores")[0].strip().splitlines()
    assert len(results) == 5
    assert any("SendWelcomeEmail" in r and '"welcome email sent to user 1"' in r for r in results)
    assert any("SendWelcomeEmail" in r and '"welcome email sent to user 2"' in r for r in results)
    assert any("RebuildSearchIndex" in r and "SUCCESSFUL" in r for r in results)
    assert any("ImportFeed" in r and "attempt 1  ERRORED" in r and "503" in r for r in results)
    assert any("ImportFeed" in r and "attempt 2  SUCCESSFUL" in r for r in results)
    assert "2 temporary files deleted" in text and "1 chore(s) succeeded, 0 failed." in text
    schedule = text.split("jobtable schedule`):")[1]
    assert "app.jobs.SendDigest" in schedule and "0 8 * * mon-fri" in schedule
    assert "app.jobs.PurgeTrash" in schedule and "@daily" in schedule
