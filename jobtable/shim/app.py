"""``Celery``: the app object of the Celery-free API.

The app holds configuration (``app.conf``, see ``conf.py``) and creates tasks
(``@app.task``); a new app becomes the current one (``current.py``).  It is
the top of the shim: every other module knows an app only by the ``App``
protocol.  The queue is jobtable's database: ``broker``/``backend``
may be omitted (JOBTABLE_DATABASE_URL is used) or given as jobtable URLs
(``jobtable+postgresql+psycopg://...``, ``jobtable+sqlite:///...``), which
then become jobtable's ``database_url``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterable
from typing import Any

from . import current, django_fixup
from .canvas import Signature
from .conf import Settings, is_setting, jobtable_url
from .decorators import create_task, rebase_default_tasks
from .exceptions import NotSupported
from .registry import registry
from .result import AsyncResult, GroupResult
from .schedules import UnknownBeatTask, beat_entries, install
from .task import Task

logger = logging.getLogger("jobtable.shim")

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
        self.conf = Settings(self._setting_changed)
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
            current.set_current(self)

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'} (jobtable.shim)>"

    # -- settings that act ------------------------------------------------------------------

    def _setting_changed(self, key: str, value: Any) -> None:
        if key in ("broker_url", "result_backend"):
            url = jobtable_url(value, key)
            if url is not None:
                from .. import settings

                if settings.get_settings().database_url != url:
                    settings.configure(database_url=url)
        elif key == "beat_schedule":
            # Django's settings (config_from_object) come before any task
            # module is imported: an entry for a task not defined yet is
            # resolved when the worker or a command starts, after discovery.
            self.install_beat_schedule(defer_unknown=True)

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
        self.conf.update({key: value for key, value in values.items() if is_setting(key)})

    # -- tasks ------------------------------------------------------------------------------

    @property
    def Task(self) -> type[Any]:  # noqa: N802  (Celery's name: class MyTask(app.Task))
        return self._task_cls or Task

    @Task.setter
    def Task(self, task_cls: type[Any]) -> None:  # noqa: N802  (Celery's `app.Task = CustomTask`)
        """The base class of this app's tasks (and of ``@shared_task`` tasks)
        from now on.  Tasks already defined on the default base are moved
        onto it too: in Celery they are built lazily, so the order of
        ``app.Task = ...`` and the task modules' imports does not matter."""
        if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
            raise TypeError(
                f"app.Task = {task_cls!r}: the base class must subclass jobtable.shim.Task "
                "(class CustomTask(app.Task): ... or from jobtable.shim import Task)."
            )
        self._task_cls = task_cls
        rebase_default_tasks(self, task_cls)

    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task``, ``@app.task(bind=True, name=..., max_retries=...)``."""
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
        self.discover_pending()
        return dict(registry.tasks)

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send a task by name, without importing it (it may live in another code base)."""
        return Signature(name, args or (), kwargs or {}, options, app=self).apply_async()

    def signature(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return Signature(name, args or (), kwargs or {}, options, app=self)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:  # noqa: N802  (Celery's name)
        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, group_id: str, results: Any = None) -> Any:  # noqa: N802
        return GroupResult(group_id, results or [], app=self)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` of each package.  Lazy unless ``force``
        (a Django ``lambda: settings.INSTALLED_APPS`` is called when tasks are
        first looked up, after Django is set up).  Without packages: the
        installed Django apps when ``DJANGO_SETTINGS_MODULE`` is set (as
        Celery's Django fix-up does), else ``include`` and ``imports``."""
        self._related_name = related_name
        if packages is None:
            if django_fixup.configured():
                packages = django_fixup.django_packages
            else:
                packages = list(self.conf.include) + list(self.conf.imports)
        self._pending_packages.append(packages)
        registry.discover_later(self.discover_pending)
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
        self.install_beat_schedule(defer_unknown=True)
        return key

    def beat_entries(self) -> list[tuple[Any, Any]]:
        """``beat_schedule`` (and ``add_periodic_task``) as jobtable schedule
        entries: ``(job, Schedule)`` pairs, as JOBTABLE_SCHEDULE takes them."""
        return beat_entries({**dict(self.conf.beat_schedule or {}), **self._periodic}, app=self)

    def install_beat_schedule(self, defer_unknown: bool = False) -> None:
        """Put the beat entries into jobtable's schedule (JOBTABLE_SCHEDULE), so
        ``jobtable``'s scheduler enqueues them.  Called whenever
        ``conf.beat_schedule`` is assigned; call it again after changing the
        dict in place.  ``defer_unknown``: an entry whose task is not defined
        yet waits for ``resolve_beat_schedules`` (the worker's start) instead
        of raising; any other bad entry raises now."""
        try:
            pairs = self.beat_entries()
        except UnknownBeatTask:
            if not defer_unknown:
                raise
            if self not in _deferred_beat:
                _deferred_beat.append(self)
            logger.debug("Beat schedule of %r waits for task discovery.", self)
            return
        if self in _deferred_beat:
            _deferred_beat.remove(self)
        install(pairs)

    # -- compatibility no-ops -----------------------------------------------------------------

    def set_default(self) -> None:
        current.set_current(self)

    def set_current(self) -> None:
        current.set_current(self)

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


#: Apps whose beat schedule names tasks not defined when it was set.
_deferred_beat: list[Celery] = []


def resolve_beat_schedules() -> None:
    """Discover every app's tasks now (``autodiscover_tasks`` is lazy), then
    install the beat schedules that waited for them.  Called by ``jobtable
    worker`` and the commands that load the app; an entry whose task still
    does not exist raises NotSupported naming the entry and the task, so the
    worker refuses to start instead of never running it.  With
    ``DJANGO_SETTINGS_MODULE`` set, Django is set up first (django_fixup.py)."""
    django_fixup.setup()
    registry.discover_all()
    for app in list(_deferred_beat):
        app.install_beat_schedule()


def current_app() -> Celery:
    """The app created last (a default one if none was)."""
    app = current.current_app()
    if not isinstance(app, Celery):  # only Celery.__init__ and set_current make an app current
        raise TypeError(f"The current app {app!r} is not a jobtable.shim.Celery.")
    return app


def _default_app() -> Celery:
    return Celery("default")


current.set_default_factory(_default_app)
