"""The small interface every system adapter implements.

The scenarios in run.py only call these methods, so jobtable and its peers
go through exactly the same measurement code.
"""

from __future__ import annotations

from pathlib import Path

import harness
from harness import Worker, bench_env, start_workers


class Unsupported(Exception):
    """The system has no such feature (e.g. no bulk API): shown as n/a."""


class System:
    #: Short name shown in the tables.
    name = "?"
    #: Backends the system runs on ("postgresql", "sqlite").
    backends: tuple[str, ...] = ("postgresql",)

    def __init__(self, backend: str, tmpdir: Path) -> None:
        self.backend = backend
        self.tmpdir = tmpdir

    # -- lifecycle ---------------------------------------------------------------

    def fresh(self) -> None:
        """Start from an empty database/queue (called before each scenario)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Drop what ``fresh`` created."""

    # -- enqueueing (from this process, one client) --------------------------------

    def enqueue_single(self, n: int) -> None:
        """Enqueue ``n`` no-op jobs one call each."""
        raise NotImplementedError

    def enqueue_bulk(self, n: int) -> None:
        """Enqueue ``n`` no-op jobs through the system's bulk API."""
        raise Unsupported("no bulk enqueue API")

    def fill(self, n: int) -> None:
        """Pre-enqueue ``n`` no-op jobs for a drain, however is fastest."""
        self.enqueue_bulk(n)

    def send_stamp(self, sent: float) -> None:
        """Enqueue one latency job carrying its enqueue time."""
        raise NotImplementedError

    # -- workers ------------------------------------------------------------------

    def worker_commands(self) -> list[list[str]]:
        """Commands that together run "2 worker processes"."""
        raise NotImplementedError

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        extra = {"BENCH_LATENCY_FILE": str(latency_file)} if latency_file else {}
        return bench_env(**extra)

    def start_workers(self, logdir: Path, latency_file: Path | None = None) -> list[Worker]:
        return start_workers(self.worker_commands(), self.worker_env(latency_file), logdir, f"{self.name}-{self.backend}")

    def remaining(self) -> int:
        """Jobs not finished yet, as the database/queue shows it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections held by the harness process."""

    #: PostgreSQL database whose backends' CPU is counted as the server side.
    pg_database: str | None = None

    def server_cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the server side (None: not measured)."""
        if self.backend != "postgresql" or not self.pg_database:
            return None
        return harness.pg_backend_cpu_seconds(self.pg_database)
