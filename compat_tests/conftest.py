"""Fixtures of the compat tests: the project's database fixtures (imported
from ``tests/conftest.py``, so ``pg_url``/``sqlite_url`` are the same per-process
databases) and a launcher for the three kinds of worker."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pytest_generate_tests as _generate_dialects
from tests.conftest import (  # noqa: F401  (fixtures, re-exported for this directory)
    ALL_DIALECTS,
    DIALECTS,
    ROOT,
    _restore_jobtable_environment,
    fresh_mysql_database,
    fresh_pg_database,
    db_url,
    dialect,
    empty_tables,
    sqlite_url,
    subprocess_env,
)
from tests.polling import terminate, wait_for  # noqa: F401  (wait_for re-exported for this directory)
from tests.shim_support import BLOCK_CELERY



@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """tests/conftest.py's database under another name: when tests/ and
    compat_tests/ run in one session, each directory has its own session
    fixture, and the two must not create the same database."""
    yield from fresh_pg_database(request, "jobtable_test_compat")


@pytest.fixture(scope="session")
def mysql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from fresh_mysql_database(request, "jobtable_test_compat")


#: The three ways of running compat_tests/tasks.py on jobtable, and the
#: reference: a Celery worker with Redis as broker and result backend.
MODES = ("celery", "native", "shim", "redis")
#: Modes that run on every dialect of a module's ``dialects`` marker; the
#: others on the default ones (SQLite, PostgreSQL), to keep the run short.
EVERY_DIALECT = ("celery",)


def compat_params(dialects: list[str]) -> list[tuple[str, str]]:
    """(mode, dialect) pairs of ``compat``: "redis" needs no database."""
    params = [("redis", "redis")]
    for mode in MODES:
        if mode != "redis":
            params += [(mode, d) for d in (dialects if mode in EVERY_DIALECT else [d for d in DIALECTS if d in dialects])]
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A module's `compat` fixture runs once per (mode, dialect), the
    # dialects read from its `dialects` marker as tests/conftest.py reads
    # them for `dialect`.
    if "compat" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("dialects")
        dialects = list(marker.args) if marker is not None else list(DIALECTS)
        metafunc.parametrize(
            "compat", compat_params(dialects), indirect=True, scope="module", ids=lambda p: "-".join(dict.fromkeys(p))
        )
    _generate_dialects(metafunc)


def redis_url(request: pytest.FixtureRequest) -> str:
    """This machine's Redis (COMPAT_REDIS_SERVER), a database index of its
    own per xdist worker (10 for a run without xdist, 11.. for gw0..)."""
    base = os.environ.get("COMPAT_REDIS_SERVER", "redis://127.0.0.1:6379").rstrip("/")
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    index = 10 if worker == "main" else 11 + int(worker[2:]) % 5
    return f"{base}/{index}"


def redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def redis_prefix() -> str:
    """The Redis key prefix of this test process: concurrent runs (and
    xdist workers) never share a queue."""
    return f"compat-{os.getpid()}:"


def drop_redis_keys(url: str, prefix: str) -> None:
    """What a run left under its key prefix (queues nobody consumed)."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def lines(path: str | Path) -> list[list[str]]:
    try:
        return [line.split() for line in Path(path).read_text().splitlines()]
    except FileNotFoundError:
        return []


def api_for(mode: str) -> str:
    return "shim" if mode == "shim" else "celery"


def backend_for(mode: str) -> str:
    return "redis" if mode == "redis" else "jobtable"


class Worker:
    """One worker process of ``mode`` on ``queue``; its output goes to a file
    (never a pipe that could fill up)."""

    def __init__(
        self,
        mode: str,
        env: dict[str, str],
        log: Path,
        queue: str,
        processes: int = 2,
        name: str | None = None,
        app: str | None = None,
    ) -> None:
        """``app``: the Celery app module (celery mode), or the module of the
        Jobs to import too (native and shim modes)."""
        self.mode, self.log = mode, log
        env = dict(env, COMPAT_API=api_for(mode), COMPAT_BACKEND=backend_for(mode), COMPAT_WORKER=name or mode, PYTHONUNBUFFERED="1")
        queue_args = [arg for q in queue.split(",") for arg in ("--queue", q)]  # -Q a,b for Celery
        if mode in ("celery", "redis"):
            # A real Celery worker: jobtable is only its broker and result
            # backend (redis: Redis is both, the reference).
            pool = ("-P", "solo") if processes == 1 else ("-P", "threads", "-c", str(processes))
            cmd = [sys.executable, "-m", "celery", "-A", app or "compat_tests.app", "worker", *pool, "-Q", queue,
                   "-l", "info", "-n", f"{name or 'compat'}-{os.getpid()}-{log.stem}@%h", "--without-mingle",
                   "--without-gossip"]
            self.ready = " ready."
        elif mode == "native":
            # jobtable's worker running the Celery app's tasks through Celery's tracer.
            cmd = [sys.executable, "-m", "jobtable", *(("--app", app) if app else ()), "worker", "--celery-app", "compat_tests.app:app",
                   *queue_args, "--max-processes", str(processes)]
            self.ready = " consuming "
        elif mode == "shim":
            # jobtable's worker with the Celery-free shim; `import celery` fails in it.
            code = BLOCK_CELERY + "\nfrom jobtable.cli import main\nmain()\n"
            cmd = [sys.executable, "-c", code, "--app", "compat_tests.tasks", "worker",
                   *queue_args, "--max-processes", str(processes)]
            self.ready = " consuming "
        else:
            raise ValueError(mode)
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or self.ready in self.text(), timeout=60, what=f"{mode} worker up")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        terminate(self.proc, timeout=30)
        print(f"--- {self.mode} worker log ---\n{self.text()[-4000:]}", file=sys.stderr)  # shown on failure


def load_api(mode: str, url: str) -> tuple[Any, Any]:
    """(re)import compat_tests.app and compat_tests.tasks in this process for
    ``mode`` and ``url``: the app module reads both at import.  Use through
    ``api_loaded``, which undoes what importing an app does to the process."""
    import importlib

    if mode == "redis":
        os.environ["COMPAT_REDIS_URL"] = url
        os.environ["COMPAT_REDIS_PREFIX"] = redis_prefix()
    else:
        os.environ["JOBTABLE_DATABASE_URL"] = url
    os.environ["COMPAT_API"] = api_for(mode)
    os.environ["COMPAT_BACKEND"] = backend_for(mode)
    from kombu import pools

    pools.reset()
    from compat_tests import app as app_module
    from compat_tests import tasks as tasks_module

    app_module = importlib.reload(app_module)
    tasks_module = importlib.reload(tasks_module)
    return app_module, tasks_module


@contextmanager
def api_loaded(mode: str, url: str) -> Iterator[tuple[Any, Any]]:
    """``load_api``, then restore what the import changed: environment
    variables, and the current app of Celery and of jobtable.shim (a new app
    becomes the current one, which ``@shared_task`` tasks of other test
    modules in this process would otherwise be sent through)."""
    import celery._state as celery_state

    import jobtable.shim.current as shim_current

    saved_env = {k: os.environ.get(k) for k in ("JOBTABLE_DATABASE_URL", "COMPAT_API", "COMPAT_BACKEND", "COMPAT_REDIS_URL", "COMPAT_REDIS_PREFIX")}
    saved_shim = shim_current._current
    saved_celery = (celery_state.default_app, getattr(celery_state._tls, "current_app", None))
    loaded = load_api(mode, url)
    try:
        yield loaded
    finally:
        if api_for(mode) == "celery":
            loaded[0].app.close()  # its broker connections and producer pool
        from kombu import pools

        pools.reset()
        shim_current._current = saved_shim
        celery_state.default_app, celery_state._tls.current_app = saved_celery
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(
        mode: str, env: dict[str, str], queue: str, processes: int = 2, name: str | None = None, app: str | None = None
    ) -> Worker:
        worker = Worker(mode, env, tmp_path / f"{name or mode}-{len(started)}.log", queue, processes, name, app)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
