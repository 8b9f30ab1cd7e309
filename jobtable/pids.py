"""Is a process of this host still the one that wrote a row?  (SQLite's
fast death detection: one host by nature.)"""

from __future__ import annotations

import os
from datetime import datetime


def pid_alive(pid: int, row_started_at: datetime | None) -> bool:
    """Whether ``pid`` is a process of this host that could have written a
    row at ``row_started_at`` (a process started later reuses the pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    started = process_start(pid)
    if started is not None and row_started_at is not None and started > row_started_at.timestamp() + 2.0:
        return False
    return True


def process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of ``pid`` on Linux; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22: starttime, in clock ticks since boot
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


