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
