"""``Celery``: the app object of the Celery-free API, and its configuration.

The app holds configuration (``app.conf``) and creates tasks
(``@app.task``).  The queue is jobtable's database: ``broker``/``backend``
may be omitted (JOBTABLE_DATABASE_URL is used) or given as jobtable URLs
(``jobtable+postgresql+psycopg://...``, ``jobtable+sqlite:///...``), which
then become jobtable's ``database_url``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from .exceptions import NotSupported

logger = logging.getLogger("jobtable.shim")

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
    "task_soft_time_limit": None,
    "task_ignore_result": False,
    "task_acks_late": False,
    "task_track_started": False,
    "task_create_missing_queues": True,
    "result_expires": None,
    "result_extended": False,
    "timezone": None,
    "enable_utc": True,
    "beat_schedule": {},
    "imports": (),
    "include": (),
}

#: Settings that change behaviour the shim cannot provide -> the alternative.
UNSUPPORTED_SETTINGS: dict[str, str] = {
    "task_annotations": "Set the options on the tasks themselves (@app.task(...)).",
    "task_queues": "Queues need no declaration in jobtable: name them in queue= and start workers with --queue.",
    "broker_transport_options": "The queue is a table: there is no transport to configure.",
    "worker_prefetch_multiplier": "Use `jobtable worker --max-pending-per-process`.",
    "worker_concurrency": "Use `jobtable worker --max-processes`.",
    "task_reject_on_worker_lost": "The native worker records a lost job LOST (and retries it if it has retries).",
    "result_backend_transport_options": "Results are rows of jobtable_result.",
}

#: Values the shim accepts without acting on them (documented differences).
IGNORED_SETTINGS = {
    "task_acks_late",
    "task_track_started",
    "task_create_missing_queues",
    "result_expires",
    "result_extended",
    "enable_utc",
    "task_ignore_result",
    "broker_connection_retry_on_startup",
    "worker_hijack_root_logger",
}


def _jobtable_url(value: Any, setting: str) -> str | None:
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

    def __init__(self, app: Celery) -> None:
        object.__setattr__(self, "_app", app)
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
            self._app._setting_changed(key, value)
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
            _jobtable_url(value, key)


class Celery:
    """The app.  ``Celery("proj")``, ``Celery("proj", broker="jobtable+sqlite:///jobs.sqlite3")``."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | None = None,
        set_as_current: bool = True,
        task_cls: Any = None,
        **kwargs: Any,
    ) -> None:
        for name in ("loader", "amqp", "events", "log", "control", "fixups", "config_source"):
            if kwargs.get(name) is not None:
                raise NotSupported(f"Celery({name}=...)", "jobtable has no pluggable Celery components.")
            kwargs.pop(name, None)
        self.main = main
        self.conf = Settings(self)
        self._task_cls = task_cls
        self._pending_packages: list[Callable[[], Iterable[str]] | Iterable[str]] = []
        self._periodic: dict[str, dict[str, Any]] = {}
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(include)
        # Celery treats other keyword arguments as settings.
        self.conf.update({key: value for key, value in kwargs.items() if key not in ("autofinalize", "strict_typing")})
        if set_as_current:
            _set_current(self)

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'} (jobtable.shim)>"

    # -- settings that act ------------------------------------------------------------------

    def _setting_changed(self, key: str, value: Any) -> None:
        if key in ("broker_url", "result_backend"):
            url = _jobtable_url(value, key)
            if url is not None:
                from .. import settings

                if settings.get_settings().database_url != url:
                    settings.configure(database_url=url)
        elif key == "beat_schedule":
            self.install_beat_schedule()

    def config_from_object(
        self, obj: Any, namespace: str | None = None, silent: bool = False, force: bool = False
    ) -> None:
        """Read settings from a module, a ``"module:attr"`` path or an object.

        With ``namespace="CELERY"``, ``CELERY_TASK_ALWAYS_EAGER`` is read as
        ``task_always_eager`` (Django style); without it, lowercase names.
        """
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            try:
                obj = importlib.import_module(module_name)
            except ImportError:
                if silent:
                    return
                raise
            if attr:
                obj = getattr(obj, attr)
        prefix = f"{namespace}_" if namespace else ""
        values: dict[str, Any] = {}
        for name in dir(obj):
            if name.startswith("_"):
                continue
            if prefix:
                if name.startswith(prefix):
                    values[name[len(prefix) :].lower()] = getattr(obj, name)
            elif name.islower():
                values[name] = getattr(obj, name)
        # A settings module also holds imports and helpers: keep settings only.
        self.conf.update({key: value for key, value in values.items() if _is_setting(key)})

    # -- tasks ------------------------------------------------------------------------------

    @property
    def Task(self) -> type[Any]:  # noqa: N802  (Celery's name: class MyTask(app.Task))
        from .task import Task

        return self._task_cls or Task

    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task``, ``@app.task(bind=True, name=..., max_retries=...)``."""
        from .task import create_task

        if args and callable(args[0]) and len(args) == 1 and not options:
            return create_task(args[0], app=self, base=self._task_cls)

        def decorate(fun: Callable[..., Any]) -> Any:
            opts = dict(options)
            base = opts.pop("base", None) or self._task_cls
            return create_task(fun, app=self, base=base, **opts)

        return decorate

    @property
    def tasks(self) -> dict[str, Any]:
        """Registered tasks by name (after autodiscovery)."""
        from .task import registry

        self.discover_pending()
        return dict(registry.tasks)

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send a task by name, without importing it (it may live in another code base)."""
        from .canvas import Signature

        return Signature(name, args or (), kwargs or {}, options, app=self).apply_async()

    def signature(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        from .canvas import Signature

        return Signature(name, args or (), kwargs or {}, options, app=self)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:  # noqa: N802  (Celery's name)
        from .result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, group_id: str, results: Any = None) -> Any:  # noqa: N802
        from .result import GroupResult

        return GroupResult(group_id, results or [], app=self)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` of each package.  Lazy unless ``force``
        (a Django ``lambda: settings.INSTALLED_APPS`` is called when tasks are
        first looked up, after Django is set up)."""
        self._related_name = related_name
        if packages is None:
            packages = list(self.conf.include) + list(self.conf.imports)
        self._pending_packages.append(packages)
        if self not in _discovering:
            _discovering.append(self)
        if force:
            self.discover_pending()

    def discover_pending(self) -> None:
        pending, self._pending_packages = self._pending_packages, []
        related = getattr(self, "_related_name", "tasks")
        for packages in pending:
            names = packages() if callable(packages) else packages
            for package in names:
                module = f"{package}.{related}"
                try:
                    spec = importlib.util.find_spec(module)
                except ModuleNotFoundError:
                    spec = None
                if spec is not None:
                    importlib.import_module(module)
        for module in (*self.conf.include, *self.conf.imports):
            importlib.import_module(module)

    # -- periodic tasks -------------------------------------------------------------------

    def add_periodic_task(
        self, schedule: Any, sig: Any, args: Any = (), kwargs: Any = None, name: str | None = None, **opts: Any
    ) -> str:
        """Celery's ``add_periodic_task``: an entry added to the beat schedule."""
        key = name or f"{sig.task}{tuple(sig.args)!r}"
        entry = {
            "task": sig.task,
            "schedule": schedule,
            "args": tuple(sig.args) or tuple(args),
            "kwargs": dict(sig.kwargs or kwargs or {}),
            "options": {**sig.options, **opts},
        }
        self._periodic[key] = entry
        self.install_beat_schedule()
        return key

    def beat_entries(self) -> list[tuple[Any, Any]]:
        """``beat_schedule`` (and ``add_periodic_task``) as jobtable schedule
        entries: ``(job, Schedule)`` pairs, as JOBTABLE_SCHEDULE takes them."""
        from .schedules import beat_entries

        return beat_entries({**dict(self.conf.beat_schedule or {}), **self._periodic}, app=self)

    def install_beat_schedule(self) -> None:
        """Put the beat entries into jobtable's schedule (JOBTABLE_SCHEDULE), so
        ``jobtable``'s scheduler enqueues them.  Called whenever
        ``conf.beat_schedule`` is assigned; call it again after changing the
        dict in place."""
        from .schedules import install

        install(self.beat_entries())

    # -- compatibility no-ops -----------------------------------------------------------------

    def set_default(self) -> None:
        _set_current(self)

    def set_current(self) -> None:
        _set_current(self)

    def finalize(self, auto: bool = False) -> None:
        """Nothing to finalize: tasks are registered when they are defined."""

    def start(self, argv: Any = None) -> None:
        raise NotSupported("the celery command line", "Run `jobtable worker --app <module> --queue celery`.")

    def worker_main(self, argv: Any = None) -> None:
        self.start(argv)

    @property
    def control(self) -> Any:
        raise NotSupported(
            "app.control (remote control: inspect, broadcast, rate_limit...)",
            "Use AsyncResult(id).revoke() for waiting tasks, and the jobtable dashboard or CLI to see workers.",
        )

    @property
    def on_after_configure(self) -> Any:
        raise NotSupported(
            "app.on_after_configure / on_after_finalize signals",
            "Call app.add_periodic_task(...) at import time, or set app.conf.beat_schedule.",
        )

    on_after_finalize = on_after_configure


_current: Celery | None = None

#: Apps with autodiscovery still to do (done when a task name is first not found).
_discovering: list[Celery] = []


def discover_all() -> None:
    while _discovering:
        _discovering.pop().discover_pending()


def _set_current(app: Celery) -> None:
    global _current
    _current = app


def current_app() -> Celery:
    """The app created last (a default one if none was)."""
    global _current
    if _current is None:
        _current = Celery("default")
    return _current


_SETTING_PREFIXES = ("task_", "result_", "broker_", "beat_", "worker_", "event_", "security_", "cache_", "database_")


def _is_setting(key: str) -> bool:
    return key in DEFAULTS or key in UNSUPPORTED_SETTINGS or key.startswith(_SETTING_PREFIXES)
