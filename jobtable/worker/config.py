"""What one ``jobtable worker`` run was asked to do: settings, then flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigurationError
from ..settings import Settings, get_settings

POOLS = ("processes", "threads")


@dataclass(frozen=True)
class WorkerConfig:
    queues: list[str] = field(default_factory=lambda: ["default"])
    processes: int = 1
    pool: str = "processes"
    max_jobs_per_process: int = 0
    max_pending_per_process: int = 100
    stats_every: float = 0
    burst: bool = False
    lost_after: float = 30
    poll_interval: float = 1.0
    listen: bool = True
    shutdown_grace: float = 30
    timeout: float = 86400
    timeout_grace: float = 10
    results_retention: float = 604800
    #: Attempts that killed their worker process before a job is QUARANTINED
    #: (0: never).
    quarantine_after: int = 3
    middleware: list[str] = field(default_factory=list)

    @property
    def heartbeat_every(self) -> float:
        # Several heartbeats per lost_after window, so one slow beat is not death.
        return max(0.2, min(5.0, self.lost_after / 5))

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **flags: Any) -> WorkerConfig:
        """Typed settings, overridden by the flags that were given (not None)."""
        s = settings or get_settings()
        values: dict[str, Any] = {
            "queues": list(s.worker_queues) or ["default"],
            "processes": s.worker_max_processes or (os.cpu_count() or 1),
            "pool": s.worker_pool,
            "max_jobs_per_process": s.worker_max_jobs_per_process,
            "max_pending_per_process": s.worker_max_pending_per_process,
            "stats_every": s.worker_stats_every,
            "lost_after": s.worker_lost_after,
            "poll_interval": s.worker_poll_interval_ms / 1000,
            "listen": bool(s.worker_listen),
            "shutdown_grace": s.worker_shutdown_grace,
            "timeout": s.timeout,
            "timeout_grace": s.worker_timeout_grace,
            "results_retention": s.results_retention,
            "quarantine_after": s.worker_quarantine_after,
            "middleware": list(s.middleware),
        }
        values.update({key: value for key, value in flags.items() if value is not None})
        if values["processes"] == 0:
            values["processes"] = os.cpu_count() or 1
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if self.pool not in POOLS:
            raise ConfigurationError(f"Unknown worker pool {self.pool!r}: use one of {', '.join(POOLS)}.")
        if self.processes < 1:
            raise ConfigurationError(f"--max-processes must be 1 or more, got {self.processes}.")
        if self.max_pending_per_process < 1:
            raise ConfigurationError(
                f"--max-pending-per-process must be 1 or more, got {self.max_pending_per_process}."
            )
        if self.lost_after <= 0:
            raise ConfigurationError(f"JOBTABLE_WORKER_LOST_AFTER must be positive, got {self.lost_after}.")
        if self.quarantine_after < 0:
            raise ConfigurationError(
                f"JOBTABLE_WORKER_QUARANTINE_AFTER must be 0 (never quarantine) or more, got {self.quarantine_after}."
            )
        if not self.queues:
            raise ConfigurationError("The worker needs at least one queue (--queue).")
