"""Typed settings, all in one place.

Precedence, highest first: ``JOBTABLE_*`` environment variables,
``jobtable.configure(...)``, ``[tool.jobtable]`` in the nearest
``pyproject.toml`` (searched from the working directory upwards), and the
defaults below.  The seeds' ``JOBS_*`` settings map to ``JOBTABLE_*`` here.

Every value is checked when it is read (``setting_rules``): a wrong type or
a value out of range fails at once, naming the setting, where it came from,
the value and the fix -- never half way through a worker's life.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import setting_legacy
from .exceptions import ConfigurationError
from .setting_rules import ENV_PREFIX, Rule, Source, env_source, module_name, object_path, queue_name, show
from .setting_rules import check as _check

__all__ = ["ENV_PREFIX", "Settings", "configure", "get_settings", "reset", "check_value", "setting_source"]

logger = logging.getLogger("jobtable.settings")

DAY = 86400
YEAR = 366 * DAY


def _setting(default: Any, rule: Rule) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _seconds(meaning: str, low: int, high: int, why_low: str = "", hint: str = "") -> Rule:
    return Rule("int", meaning, low, high, unit="seconds", why_low=why_low, hint=hint)


@dataclass(frozen=True)
class Settings:
    database_url: str = _setting("sqlite:///jobtable.sqlite3", Rule(
        "url", "the SQLAlchemy URL of the queue database", secret=True))
    # A pooler in transaction mode (PgBouncer) hands each transaction to any
    # server connection: a statement psycopg prepared on one is missing on
    # the next (PgBouncer < 1.21), and LISTEN or a session lock lasts one
    # transaction.
    database_pooler: str = _setting("none", Rule(
        "choice", "what database_url reaches: 'none' (the PostgreSQL server itself) or 'transaction' "
        "(a pooler in transaction mode such as PgBouncer: no prepared statements, and no LISTEN or session "
        "lock on its connections)", choices=("none", "transaction")))
    database_direct_url: str = _setting("", Rule(
        "direct_url", "the PostgreSQL URL that reaches the database server without the pooler, for the "
        "connections that need a session of their own when database_pooler is 'transaction': LISTEN "
        "wake-ups and the workers' liveness locks ('' for none: workers then poll, and find dead "
        "workers by worker_lost_after only)", secret=True))
    # psycopg waits 130 s for a server that accepts and never answers (a
    # wrong port behind a firewall, a host that hangs): a worker's start
    # blocked for minutes.  2 s is libpq's own minimum.
    connect_timeout: int = _setting(10, _seconds(
        "the seconds jobtable waits for the database server to answer when it opens a connection "
        "(PostgreSQL and MySQL; a connect_timeout in the URL's query wins; SQLite opens a file and has none)",
        2, 3600, why_low="PostgreSQL's client library waits at least 2 seconds",
        hint="A broker connection takes Celery's broker_connection_timeout instead."))
    # MySQL/MariaDB only: GET_LOCK waits this long for a should_enqueue lock
    # that another session holds (the server frees a dead session's locks
    # when its connection closes; a hung holder keeps them).
    enqueue_lock_timeout: int = _setting(60, _seconds(
        "the seconds an enqueue on MySQL/MariaDB waits for the should_enqueue() lock of its (job class, key) "
        "that another session holds, before it fails", 1, 3600,
        why_low="0 or less would fail every enqueue that meets a held lock at once",
        hint="PostgreSQL and SQLite wait on their own locks (lock_timeout, the 30 s busy timeout)."))
    results_retention: int = _setting(604800, _seconds(
        "the seconds a finished job's result is kept before the worker (or `jobtable clear`) deletes it",
        1, 100 * YEAR, why_low="0 or less would delete every result as soon as it is written",
        hint="To keep results for long, use a large value such as 31536000 (a year)."))
    timeout: int = _setting(86400, _seconds(
        "the seconds a job may run before the worker stops it", 1, YEAR,
        why_low="0 or less would stop every job at once"))
    middleware: list[str] = _setting(["jobtable.middleware.LogContextMiddleware"], Rule(
        "names", "the dotted paths of the middleware classes wrapping each job run, outermost first",
        shape=object_path, classes_too=True))
    #: Cron entries: ``[job path or instance, cron string or Schedule]`` pairs.
    schedule: list[Any] = _setting([], Rule(
        "schedule", "the scheduled jobs: [job, cron] pairs such as ['app.jobs.DailyReport', '0 9 * * *']"))
    schedule_timezone: str = _setting("UTC", Rule(
        "timezone", "the IANA time zone in which cron schedules read their wall times"))
    schedule_catch_up_window: int = _setting(3600, _seconds(
        "the seconds after its time a missed schedule slot may still run (after downtime only the "
        "latest missed slot runs, and only within this window; 0: never catch up)", 0, YEAR))
    app: str = _setting("", Rule(
        "str", "the module imported to register jobs (--app on the command line)", shape=module_name))
    packages: list[str] = _setting([], Rule(
        "names", "the packages whose jobs.py (and chores.py) are imported automatically", shape=module_name))
    session_factory: str = _setting("", Rule(
        "str", "the dotted path of a callable returning a SQLAlchemy Session, used to load ORM "
        "instances passed as job parameters", shape=object_path))
    worker_queues: list[str] = _setting(["default"], Rule(
        "names", "the queues a worker consumes by default", shape=queue_name, min_items=1))
    worker_max_processes: int = _setting(0, Rule(
        "int", "the default number of worker processes (0: one per CPU)", 0, 1024))
    # A heartbeat goes every lost_after/5 seconds (at least every 0.2 s): from
    # 1 s on, five beats fit in the window, so one slow beat is not a death.
    worker_lost_after: int = _setting(30, _seconds(
        "the seconds without a heartbeat after which a worker's jobs are recorded LOST", 1, DAY,
        why_low="below 1 s, fewer than five heartbeats fit in the window and one slow beat "
        "declares a healthy worker dead",
        hint="Values below 5 seconds suit tests; in production a busy database can delay heartbeats."))
    worker_stats_every: int = _setting(60, _seconds(
        "the seconds between stats lines of the worker (0: never)", 0, DAY))
    worker_max_jobs_per_process: int = _setting(0, Rule(
        "int", "the jobs a worker process runs before it is replaced (0: no limit)", 0, 1_000_000_000))
    worker_max_pending_per_process: int = _setting(100, Rule(
        "int", "the most jobs a worker process claims at once (the batch adapts below it so that a "
        "batch holds about 50 ms of work)", 1, 10000))
    worker_pool: str = _setting("processes", Rule(
        "choice", "the worker pool: 'processes' (CPU-bound jobs, the default) or 'threads' (I/O-bound jobs)",
        choices=("processes", "threads")))
    # 10 ms: an idle worker polls the database at most 100 times a second per
    # process; below that (0 is a busy loop) it burns a CPU and the database
    # for nothing, since notifications wake it sooner anyway.
    worker_poll_interval_ms: int = _setting(1000, Rule(
        "int", "the milliseconds between polls when no notification arrives (PostgreSQL LISTEN/NOTIFY "
        "and SQLite data-version checks usually wake the worker sooner)", 10, 3_600_000, unit="milliseconds",
        why_low="below 10 ms an idle worker queries the database hundreds of times a second per process; "
        "0 is a busy loop"))
    worker_listen: int = _setting(1, Rule(
        "flag", "1 to wake on PostgreSQL notifications, 0 to poll only (e.g. behind PgBouncer in transaction mode)"))
    worker_shutdown_grace: int = _setting(30, _seconds(
        "the seconds running jobs get to finish after SIGTERM/SIGINT", 0, DAY))
    worker_timeout_grace: int = _setting(10, _seconds(
        "the seconds past a job's timeout after which its process is killed (the job is LOST)", 0, DAY))
    worker_quarantine_after: int = _setting(3, Rule(
        "int", "how many times a job may kill its worker process (attempts recorded LOST) before it is "
        "QUARANTINED: recorded, never claimed again, retryable by hand", 1, 1000))
    # 1 GiB: PostgreSQL cannot store a larger value in one column.
    max_message_size: int = _setting(10 * 1024 * 1024, Rule(
        "int", "the largest message (the stored row's JSON, in bytes) that enqueue and Kombu publish accept",
        1024, 1024 * 1024 * 1024, unit="bytes",
        why_low="a smaller limit would refuse the envelope of an ordinary job"))

    #: Queues routed to a Kombu broker (issue 18): {queue: amqp URL}.  Empty
    #: (the default): every queue stays in the table.
    broker_routes: dict[str, str] = _setting({}, Rule(
        "routes", "the queues whose jobs go through a RabbitMQ broker instead of the table "
        "(docs/scaling.md, 'Routing a hot queue')", secret=True,
        hint="A worker consumes routed queues or table queues, not both: run one worker per kind."))

    def __post_init__(self) -> None:
        # Settings(...) and .replace(...) are checked like every other source.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            source = Source("argument", f"Settings({f.name}=...)")
            checked = _check(f.name, _RULES[f.name], value, source, _DEFAULTS[f.name])
            object.__setattr__(self, f.name, checked)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_RULES: dict[str, Rule] = {name: f.metadata["rule"] for name, f in _FIELDS.items()}
_DEFAULTS: dict[str, Any] = {
    name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for name, f in _FIELDS.items()
}

#: Other JOBTABLE_* variables jobtable reads (command-line options; a test in
#: tests/test_settings_validation.py checks that every click envvar is here).
OTHER_VARIABLES = frozenset({
    "JOBTABLE_CELERY_APP",
    "JOBTABLE_DASHBOARD_BASIC_AUTH",
    "JOBTABLE_DASHBOARD_TOKEN",
    "JOBTABLE_DASHBOARD_READ_ONLY",
    "JOBTABLE_DASHBOARD_ALLOWED_HOSTS",
})
#: Prefix of variables reserved for jobtable's own test suite.
TEST_PREFIX = "JOBTABLE_TEST_"

_configured: dict[str, Any] = {}
#: The old name a configure() value was given under (setting_legacy), for its source.
_configured_as: dict[str, str] = {}
_on_configure: list[Callable[[], None]] = []
_cached: Settings | None = None
_sources: dict[str, Source] = {}
_pyproject_path: Path | None = None
_warned: set[str] = set()


def configure(**options: Any) -> Settings:
    """Set options in code (``jobtable.configure(database_url=...)``).

    Each value is checked here (a bad one is refused and not kept).
    Environment variables still win, so a deployment can override code.
    """
    global _cached
    options, renamed = setting_legacy.translate(options, Source("configure", ""))
    unknown = sorted(set(options) - set(_RULES))
    if unknown:
        raise ConfigurationError(
            f"Unknown jobtable setting(s): {', '.join(_with_suggestions(unknown, _RULES))}. "
            f"Known settings: {', '.join(sorted(_RULES))}."
        )
    checked = {
        name: check_value(name, value, Source("configure", renamed.get(name, name))) for name, value in options.items()
    }
    _configured.update(checked)
    for name in checked:
        _configured_as.pop(name, None)
    _configured_as.update(renamed)
    _cached = None
    # A new database URL needs a new engine: db/engine.py registers here,
    # so that settings (below the database layer) never imports it.
    for callback in _on_configure:
        callback()
    return get_settings()


def on_configure(callback: Callable[[], None]) -> None:
    """Call ``callback`` after every ``configure()`` (the engine cache uses it)."""
    if callback not in _on_configure:
        _on_configure.append(callback)


def check_value(name: str, value: Any, source: Source, kind: str | None = None) -> Any:
    """``value`` checked as setting ``name`` (``kind="number"``: seconds with a
    fraction, as some command-line flags take), or a ConfigurationError."""
    rule = _RULES[name]
    if kind is not None:
        rule = dataclasses.replace(rule, kind=kind)
    return _check(name, rule, value, source, _DEFAULTS[name])


def reset() -> None:
    """Forget ``configure()`` calls and cached values (used by tests)."""
    global _cached
    _configured.clear()
    _configured_as.clear()
    _cached = None


def get_settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = _load()
    return _cached


def setting_source(name: str) -> Source:
    """Where the current value of setting ``name`` came from."""
    get_settings()
    return _sources.get(name, Source("default", name))


def settings_file() -> Path | None:
    """The pyproject.toml whose [tool.jobtable] the settings were read from, if any."""
    get_settings()
    return _pyproject_path


def describe_sources() -> str:
    """Which file and sources set which settings, for the worker's start-up
    log (the database URL with its password masked)."""
    settings = get_settings()
    by_kind: dict[str, list[str]] = {}
    for name, source in sorted(_sources.items()):
        by_kind.setdefault(source.kind, []).append(f"{name}={show(getattr(settings, name), _RULES[name].secret)}")
    parts = []
    if "pyproject" in by_kind:
        parts.append(f"[tool.jobtable] of {_pyproject_path}: " + ", ".join(by_kind["pyproject"]))
    if "configure" in by_kind:
        parts.append("configure(): " + ", ".join(by_kind["configure"]))
    if "env" in by_kind:
        parts.append("environment: " + ", ".join(by_kind["env"]))
    if not parts:
        return "Settings: all defaults (no [tool.jobtable] in a pyproject.toml, no configure(), no JOBTABLE_* variables)."
    return "Settings: " + "; ".join(parts) + "; the rest are defaults."


def _load(environ: Mapping[str, str] | None = None) -> Settings:
    global _pyproject_path
    environ = os.environ if environ is None else environ
    sources: dict[str, Source] = {}
    values: dict[str, Any] = {}
    path, from_file, file_renamed = _from_pyproject()
    for name, value in from_file.items():
        values[name], sources[name] = value, Source("pyproject", file_renamed.get(name, name), str(path))
    for name, value in _configured.items():
        values[name], sources[name] = value, Source("configure", _configured_as.get(name, name))
    for name in _RULES:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name], sources[name] = raw, env_source(name)
    from_env, renamed = setting_legacy.translate(environ, Source("env", ""), environ=True)
    for name, value in from_env.items():
        values[name], sources[name] = value, Source("env", renamed[name])
    warn_unknown_environment(environ)
    checked = {name: check_value(name, value, sources[name]) for name, value in values.items()}
    settings = Settings(**checked)
    _sources.clear()
    _sources.update(sources)
    _pyproject_path = path
    return settings


def _find_pyproject(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_section(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}. Fix the file or remove it.") from exc
    section = data.get("tool", {}).get("jobtable", {})
    if not isinstance(section, dict):
        raise ConfigurationError(f"[tool.jobtable] of {path} must be a table of settings, e.g. timeout = 600.")
    return section


def _from_pyproject() -> tuple[Path | None, dict[str, Any], dict[str, str]]:
    path = _find_pyproject(Path.cwd())
    if path is None:
        return None, {}, {}
    section = _read_section(path)
    values = {key.replace("-", "_"): value for key, value in section.items()}
    values, renamed = setting_legacy.translate(values, Source("pyproject", "", str(path)))
    unknown = sorted(set(values) - set(_RULES))
    if unknown:
        raise ConfigurationError(
            f"Unknown key(s) in [tool.jobtable] of {path}: {', '.join(_with_suggestions(unknown, _RULES))}. "
            f"Known settings: {', '.join(sorted(_RULES))}."
        )
    return (path if values else None), values, renamed


def _with_suggestions(names: list[str], known: Any) -> list[str]:
    out = []
    for name in names:
        close = difflib.get_close_matches(name, list(known), n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out


def known_variables() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in _RULES} | set(OTHER_VARIABLES) | setting_legacy.env_names()


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``JOBTABLE_*`` variables jobtable does not read, each with the closest known name."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(TEST_PREFIX):
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            found.append((name, close[0] if close else None))
    return found


def warn_unknown_environment(environ: Mapping[str, str] | None = None) -> None:
    """Log a warning, once per process and name, for each unknown ``JOBTABLE_*`` variable:
    a misspelled setting would otherwise be ignored silently."""
    for name, close in unknown_environment(environ):
        if name in _warned:
            continue
        _warned.add(name)
        hint = f"did you mean {close}?" if close else f"known ones: {', '.join(sorted(known_variables()))}"
        logger.warning("Unknown environment variable %s is ignored (%s).", name, hint)
