"""``app.conf``: Celery's settings as the shim reads them.

The defaults, the settings refused (with what to do instead) and those
accepted without effect, and ``Settings``, the mapping with attribute access
that ``app.conf`` is.  The app reacts to the settings that act through the
callback it gives ``Settings``, so this module knows nothing of the app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from ..ratelimits import parse_rate
from .exceptions import NotSupported

#: Celery's defaults for the settings the shim reads.
DEFAULTS: dict[str, Any] = {
    "broker_url": None,
    "result_backend": None,
    # Celery's default queue, so that tasks keep going where a Celery worker
    # (or a native worker started with --queue celery) consumes them.
    "task_default_queue": "celery",
    "task_default_priority": None,
    "task_routes": None,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_time_limit": None,
    # Tasks without their own rate_limit get this one (None: no limit),
    # enforced by the database across every worker (db/ratelimit_sql.py).
    "task_default_rate_limit": None,
    "task_soft_time_limit": None,
    "task_ignore_result": False,
    "task_acks_late": False,
    "task_track_started": False,
    # With task_acks_late: a task whose worker process dies is run again once.
    "task_reject_on_worker_lost": None,
    "task_create_missing_queues": True,
    "result_expires": None,
    "result_extended": False,
    "timezone": None,
    "enable_utc": True,
    "beat_schedule": {},
    # Read by `jobtable worker`: the queues it consumes without --queue (names
    # only: exchanges and routing keys mean nothing to a table), the pool size.
    "task_queues": None,
    "worker_concurrency": None,
    "imports": (),
    "include": (),
}

#: Settings that change behaviour the shim cannot provide -> the alternative.
UNSUPPORTED_SETTINGS: dict[str, str] = {
    "task_annotations": "Set the options on the tasks themselves (@app.task(...)).",
    "broker_transport_options": "The queue is a table: there is no transport to configure.",
    "worker_prefetch_multiplier": "Use `jobtable worker --max-pending-per-process`.",
    "result_backend_transport_options": "Results are rows of jobtable_result.",
}

#: Values the shim accepts without acting on them (documented differences).
IGNORED_SETTINGS = {
    "task_track_started",
    "task_create_missing_queues",
    "result_expires",
    "result_extended",
    "enable_utc",
    "task_ignore_result",
    "broker_connection_retry_on_startup",
    "worker_hijack_root_logger",
}


def queue_names(value: Any) -> list[str]:
    """The queue names of a ``task_queues`` value: kombu ``Queue`` objects
    (their ``name``; exchange and routing key ignored), names, or a dict
    keyed by name.  A name that is not a non-empty string is refused."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        items: list[Any] = [value]
    elif isinstance(value, dict):
        items = list(value)
    else:
        try:
            items = list(value)
        except TypeError:
            raise NotSupported(
                f"task_queues={type(value).__name__}", "Give a list of kombu Queue objects or of queue names."
            ) from None
    names: list[str] = []
    for item in items:
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise NotSupported(
                f"task_queues entry {type(item).__name__}",
                "Each entry is a kombu Queue with a name, or a queue name (a non-empty string).",
            )
        if name not in names:
            names.append(name)
    return names


def check_concurrency(value: Any) -> int | None:
    """``worker_concurrency``: None (the worker's default) or a number of
    processes (0: one per CPU, as ``--max-processes 0``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NotSupported(
            f"worker_concurrency={value!r}",
            "Give a number of worker processes (an int >= 0; 0: one per CPU), or leave it unset.",
        )
    return value


def jobtable_url(value: Any, setting: str) -> str | None:
    """The database URL inside a jobtable broker/backend URL (None: use the default)."""
    if value in (None, "", "jobtable"):
        return None
    if not isinstance(value, str) or not value.startswith("jobtable+"):
        raise NotSupported(
            f"{setting}={value!r}",
            "The Celery-free API keeps tasks and results in jobtable's database: omit it, or give a "
            "jobtable URL such as 'jobtable+postgresql+psycopg://user@host/db' or 'jobtable+sqlite:///jobs.sqlite3'.",
        )
    return value[len("jobtable+") :]


class Settings(MutableMapping[str, Any]):
    """``app.conf``: Celery's settings as a mapping with attribute access."""

    def __init__(self, on_change: Callable[[str, Any], None]) -> None:
        # on_change: the app's reaction to a setting that acts (a database
        # URL, beat_schedule); what it raises undoes the assignment.
        object.__setattr__(self, "_on_change", on_change)
        object.__setattr__(self, "_data", dict(DEFAULTS))

    # -- mapping ------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._check(key, value)
        missing = object()
        previous = self._data.get(key, missing)
        self._data[key] = value
        try:
            self._on_change(key, value)
        except BaseException:
            # A setting that could not take effect is not kept.
            if previous is missing:
                del self._data[key]
            else:
                self._data[key] = previous
            raise

    def __delitem__(self, key: str) -> None:
        self._data[key] = DEFAULTS.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    # -- Celery's helpers --------------------------------------------------------------

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def _check(self, key: str, value: Any) -> None:
        if key in UNSUPPORTED_SETTINGS and value:
            raise NotSupported(f"the {key} setting", UNSUPPORTED_SETTINGS[key])
        if key in ("task_serializer", "result_serializer") and value != "json":
            raise NotSupported(
                f"{key}={value!r}",
                "Messages and results are stored as JSON: use 'json' (pickle would let whoever can write the "
                "table run code in your workers).",
            )
        if key == "accept_content" and value and "json" not in value and "application/json" not in value:
            raise NotSupported(f"accept_content={value!r}", "Messages are JSON: include 'json'.")
        if key in ("broker_url", "result_backend"):
            jobtable_url(value, key)
        if key == "task_queues":
            queue_names(value)
        if key == "worker_concurrency":
            check_concurrency(value)
        if key == "task_default_rate_limit":
            parse_rate(value, "task_default_rate_limit")


_SETTING_PREFIXES = ("task_", "result_", "broker_", "beat_", "worker_", "event_", "security_", "cache_", "database_")


def is_setting(key: str) -> bool:
    """Whether a name read from a settings module is a Celery setting (not an import or a helper)."""
    return key in DEFAULTS or key in UNSUPPORTED_SETTINGS or key.startswith(_SETTING_PREFIXES)
