"""Typed settings, all in one place.

Precedence, highest first: ``JOBTABLE_*`` environment variables,
``jobtable.configure(...)``, ``[tool.jobtable]`` in the nearest
``pyproject.toml`` (searched from the working directory upwards), and the
defaults below.  The seeds' ``JOBS_*`` settings map to ``JOBTABLE_*`` here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .exceptions import ConfigurationError

ENV_PREFIX = "JOBTABLE_"


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL of the queue database.
    database_url: str = "sqlite:///jobtable.sqlite3"
    #: Seconds a JobResult is kept before ``jobtable clear`` removes it.
    results_retention: int = 604800
    #: Seconds a job may run before the worker stops it.
    timeout: int = 86400
    #: Dotted paths of middleware classes wrapping each job run.
    middleware: list[str] = field(default_factory=lambda: ["jobtable.middleware.LogContextMiddleware"])
    #: Cron entries: ``[job path or instance, cron string or Schedule]`` pairs.
    schedule: list[Any] = field(default_factory=list)
    #: IANA time zone in which cron schedules read their wall times.
    schedule_timezone: str = "UTC"
    #: Seconds after its time a missed schedule slot may still run (after
    #: downtime only the latest missed slot runs, and only within this window).
    schedule_catch_up_window: int = 3600
    #: Module imported to register jobs (``--app`` on the command line).
    app: str = ""
    #: Packages whose ``jobs.py`` (and ``chores.py``) are imported automatically.
    packages: list[str] = field(default_factory=list)
    #: Dotted path of a callable returning a SQLAlchemy Session, used to load
    #: ORM instances passed as job parameters.
    session_factory: str = ""
    #: Default queues a worker consumes.
    worker_queues: list[str] = field(default_factory=lambda: ["default"])
    #: Default number of worker processes (0: one per CPU).
    worker_max_processes: int = 0
    #: Seconds without a heartbeat after which a worker's jobs are LOST.
    worker_lost_after: int = 30
    #: Seconds between stats lines of the worker (0: never).
    worker_stats_every: int = 60
    #: Jobs a worker process runs before it is replaced (0: no limit).
    worker_max_jobs_per_process: int = 0
    #: Most jobs a worker process claims at once (the batch adapts below it
    #: so that a batch holds about 50 ms of work).
    worker_max_pending_per_process: int = 100
    #: "processes" (CPU-bound jobs, the default) or "threads" (I/O-bound jobs).
    worker_pool: str = "processes"
    #: Milliseconds between polls when no notification arrives (PostgreSQL
    #: LISTEN/NOTIFY and SQLite data-version checks usually wake sooner).
    worker_poll_interval_ms: int = 1000
    #: 0 to poll only (no LISTEN), e.g. behind PgBouncer in transaction mode.
    worker_listen: int = 1
    #: Seconds running jobs get to finish after SIGTERM/SIGINT.
    worker_shutdown_grace: int = 30
    #: Seconds past a job's timeout after which its process is killed (LOST).
    worker_timeout_grace: int = 10
    #: A job whose run killed its worker process this many times (attempts
    #: recorded LOST) is QUARANTINED: recorded, never claimed again, retryable by hand.
    worker_quarantine_after: int = 3
    #: Largest message (the stored row's JSON, in bytes) that enqueue and
    #: Kombu publish accept; larger ones are refused naming the argument.
    max_message_size: int = 10 * 1024 * 1024

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELD_TYPES: dict[str, Any] = get_type_hints(Settings)
_configured: dict[str, Any] = {}
_cached: Settings | None = None


def configure(**options: Any) -> Settings:
    """Set options in code (``jobtable.configure(database_url=...)``).

    Environment variables still win, so a deployment can override code.
    """
    global _cached
    unknown = set(options) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigurationError(
            f"Unknown jobtable setting(s): {', '.join(sorted(unknown))}. "
            f"Known settings: {', '.join(sorted(_FIELD_TYPES))}."
        )
    _configured.update(options)
    _cached = None
    # A new database URL needs a new engine.
    from .db import engine as _engine

    _engine.reset_engines()
    return get_settings()


def reset() -> None:
    """Forget ``configure()`` calls and cached values (used by tests)."""
    global _cached
    _configured.clear()
    _cached = None


def get_settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = _load()
    return _cached


def _load() -> Settings:
    values: dict[str, Any] = {}
    values.update(_from_pyproject())
    values.update(_configured)
    values.update(_from_env())
    return Settings(**{name: _coerce(name, value) for name, value in values.items()})


def _find_pyproject(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _from_pyproject() -> dict[str, Any]:
    path = _find_pyproject(Path.cwd())
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}. Fix the file or remove it.") from exc
    section = data.get("tool", {}).get("jobtable", {})
    values = {key.replace("-", "_"): value for key, value in section.items()}
    unknown = set(values) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigurationError(
            f"Unknown key(s) in [tool.jobtable] of {path}: {', '.join(sorted(unknown))}. "
            f"Known settings: {', '.join(sorted(_FIELD_TYPES))}."
        )
    return values


def _from_env() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELD_TYPES:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def _coerce(name: str, value: Any) -> Any:
    """Turn strings from the environment into the field's type."""
    kind = _FIELD_TYPES[name]
    env_name = ENV_PREFIX + name.upper()
    if kind is int or kind == "int":
        if isinstance(value, bool):
            raise ConfigurationError(f"{env_name} must be a whole number, got {value!r}.")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{env_name} must be a whole number of seconds or a count, got {value!r}.") from None
    if kind is str or kind == "str":
        if not isinstance(value, str):
            raise ConfigurationError(f"{env_name} must be a string, got {value!r}.")
        return value
    # list[...] fields: JSON in the environment, or comma-separated for lists of strings.
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{env_name} is not valid JSON ({exc}): {value!r}.") from None
        else:
            value = [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{env_name} must be a list, got {value!r}.")
    return list(value)
