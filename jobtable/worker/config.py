"""What one ``jobtable worker`` run was asked to do: settings, then flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigurationError
from ..setting_rules import Source
from ..settings import Settings, check_value, get_settings

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
        """Typed settings, overridden by the flags that were given (not None).

        A flag is checked like the setting it overrides, and named in the error.
        """
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
        for key, value in flags.items():
            if value is None:
                continue
            if key in FLAGS:
                flag, setting, kind = FLAGS[key]
                value = check_value(setting, value, Source("flag", flag), kind=kind)
            values[key] = value
        if values["processes"] == 0:
            values["processes"] = os.cpu_count() or 1
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Every field in its setting's range (a WorkerConfig made in code too)."""
        for name, (setting, kind) in CHECKED.items():
            check_value(setting, getattr(self, name), Source("argument", f"WorkerConfig({name}=...)"), kind=kind)
        if self.processes < 1:
            raise ConfigurationError(
                f"WorkerConfig(processes={self.processes}): a worker needs 1 process or more "
                "(--max-processes 0 means one per CPU)."
            )
        poll = self.poll_interval
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not MIN_POLL <= poll <= MAX_POLL:
            raise ConfigurationError(
                f"WorkerConfig(poll_interval={poll!r}): the poll interval must be from {MIN_POLL} to {MAX_POLL} "
                "seconds (below 10 ms an idle worker keeps the database busy for nothing). "
                "Set JOBTABLE_WORKER_POLL_INTERVAL_MS, e.g. 1000."
            )


#: Worker flags -> (command-line name, the setting they override, the kind of number).
FLAGS: dict[str, tuple[str, str, str | None]] = {
    "queues": ("--queue", "worker_queues", None),
    "processes": ("--max-processes", "worker_max_processes", None),
    "max_jobs_per_process": ("--max-jobs-per-process", "worker_max_jobs_per_process", None),
    "max_pending_per_process": ("--max-pending-per-process", "worker_max_pending_per_process", None),
    "stats_every": ("--stats-every", "worker_stats_every", "number"),
    "pool": ("--pool", "worker_pool", None),
}

#: WorkerConfig fields -> (the setting whose rule they follow, the kind of number).
CHECKED: dict[str, tuple[str, str | None]] = {
    "queues": ("worker_queues", None),
    "processes": ("worker_max_processes", None),
    "pool": ("worker_pool", None),
    "max_jobs_per_process": ("worker_max_jobs_per_process", None),
    "max_pending_per_process": ("worker_max_pending_per_process", None),
    "stats_every": ("worker_stats_every", "number"),
    "lost_after": ("worker_lost_after", "number"),
    "shutdown_grace": ("worker_shutdown_grace", "number"),
    "timeout": ("timeout", "number"),
    "timeout_grace": ("worker_timeout_grace", "number"),
    "results_retention": ("results_retention", "number"),
    "quarantine_after": ("worker_quarantine_after", None),
    "middleware": ("middleware", None),
}

#: Seconds: the bounds of JOBTABLE_WORKER_POLL_INTERVAL_MS.
MIN_POLL = 0.01
MAX_POLL = 3600.0
