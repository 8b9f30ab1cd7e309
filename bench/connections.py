"""How many PostgreSQL server connections each jobtable process takes
(issue 18: the connection budget of N hosts x M processes).

Each component runs alone against a fresh database of the local server
(127.0.0.1:5432, created and dropped here), does some work, and the server
sessions of that database are counted (``pg_stat_activity``, client
backends) until the count has been stable for 2 s; the largest count seen
is reported too.  Behind PgBouncer (transaction mode, tests/pgbouncer.py)
the direct sessions (LISTEN, liveness locks: application name
``jobtable-direct``) are counted on the server and the pooled clients and
their server connections on PgBouncer's console (``SHOW POOLS``).

    .venv/bin/python bench/connections.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobtable.db import engine as db_engine  # noqa: E402
from jobtable.db import migrate  # noqa: E402

from tests.pgbouncer import PgBouncer  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = f"jobtable_bench_conns_{os.getpid()}"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}"


def sessions(admin: Any) -> list[Any]:
    with admin.connect() as conn:
        return list(conn.execute(text(
            "SELECT application_name FROM pg_stat_activity WHERE datname = :db AND backend_type = 'client backend'"),
            {"db": DATABASE}))


def steady(admin: Any, seconds: float = 2.0, timeout: float = 20.0) -> tuple[int, int, list[Any]]:
    """(stable count, largest count seen, the sessions)."""
    deadline = time.monotonic() + timeout
    last, since, peak = -1, time.monotonic(), 0
    found: list[Any] = []
    while time.monotonic() < deadline:
        found = sessions(admin)
        peak = max(peak, len(found))
        if len(found) != last:
            last, since = len(found), time.monotonic()
        elif time.monotonic() - since >= seconds:
            break
        time.sleep(0.1)
    return last, peak, found


def enqueue(url: str, count: int) -> None:
    code = (
        "import jobtable, sys; jobtable.configure(database_url=sys.argv[1]);"
        "from tests.worker_jobs import Noop; from jobtable import run_in_worker_many;"
        f"run_in_worker_many([Noop() for _ in range({count})])"
    )
    subprocess.run([sys.executable, "-c", code, url], cwd=ROOT, check=True, env=_env(url))


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}
    env.update(PYTHONPATH=str(ROOT), JOBTABLE_DATABASE_URL=url, JT_RECORD="/dev/null", **extra)
    return env


def measure(name: str, argv: list[str], env: dict[str, str], admin: Any, bouncer: PgBouncer | None = None,
            poke: Any = None) -> None:
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # start-up: nothing to await from outside but its sessions
        if poke is not None:
            poke()
        stable, peak, found = steady(admin)
        line = f"{name}: {stable} server sessions (peak {peak})"
        if bouncer is not None:
            direct = sum(1 for s in found if s.application_name == "jobtable-direct")
            pools = [p for p in bouncer.pools() if p["database"] == DATABASE]
            clients = sum(p["cl_active"] + p["cl_waiting"] for p in pools)
            servers = sum(p["sv_active"] + p["sv_idle"] + p["sv_used"] + p["sv_tested"] + p["sv_login"] for p in pools)
            line += f"; {direct} direct, {clients} PgBouncer clients sharing {servers} server connections"
        print(line, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        # Until its sessions are gone.
        deadline = time.monotonic() + 20
        while sessions(admin) and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> None:
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    bouncer = PgBouncer().start()
    try:
        migrate.upgrade(db_engine.create_jobtable_engine(URL))
        db_engine.reset_engines()
        worker = [sys.executable, "-m", "jobtable", "--app", "tests.worker_jobs", "worker"]
        for m in (1, 2, 4):
            measure(f"native worker, {m} processes", [*worker, "--max-processes", str(m)], _env(URL), admin,
                    poke=lambda: enqueue(URL, 200))
        pooled = bouncer.url(DATABASE)
        direct_env = _env(pooled, JOBTABLE_DATABASE_POOLER="transaction",
                          JOBTABLE_DATABASE_DIRECT_URL=URL + "?application_name=jobtable-direct")
        for m in (1, 2, 4):
            measure(f"native worker behind PgBouncer, {m} processes", [*worker, "--max-processes", str(m)],
                    direct_env, admin, bouncer, poke=lambda: enqueue(pooled, 200))
        celery = [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "worker", "-Q",
                  "transport_tests", "-l", "warning"]
        for pool in ("prefork", "threads"):
            measure(f"Celery worker on the transport, -P {pool} -c 2", [*celery, "-P", pool, "-c", "2"], _env(URL),
                    admin)
        port = 18000 + os.getpid() % 1000
        measure("dashboard (one page load)", [sys.executable, "-m", "jobtable", "dashboard", "--port", str(port)],
                _env(URL), admin, poke=lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read())
    finally:
        bouncer.stop()
        db_engine.reset_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
