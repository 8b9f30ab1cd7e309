"""MariaDB/MySQL plumbing of the benchmark (issue 17): databases named
``bench_*`` on the local server, its version and durability settings.

The server: 127.0.0.1:3306, user root, no password (``BENCH_MYSQL_HOST``,
``BENCH_MYSQL_PORT``, ``BENCH_MYSQL_USER`` to change).  Only databases whose
name starts with ``bench_`` are created or dropped.
"""

from __future__ import annotations

import os
from typing import Any

import harness

MYSQL_HOST = os.environ.get("BENCH_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("BENCH_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("BENCH_MYSQL_USER", "root")


def url(dbname: str, driver: str = "mysql+mysqldb") -> str:
    return f"{driver}://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/{dbname}"


def connect(dbname: str | None = None) -> Any:
    import MySQLdb

    kwargs: dict[str, Any] = {"host": MYSQL_HOST, "port": MYSQL_PORT, "user": MYSQL_USER, "charset": "utf8mb4"}
    if dbname:
        kwargs["database"] = dbname
    return MySQLdb.connect(**kwargs)


def _check(name: str) -> None:
    if not name.startswith("bench_") or not name.replace("_", "").isalnum():
        raise harness.BenchError(f"refusing to manage database {name!r}: bench databases start with bench_")


def _end_sessions(cur: Any, name: str) -> None:
    """End every other session using database ``name`` -- what PostgreSQL's
    ``DROP DATABASE ... WITH (FORCE)`` does.  Kombu's SQLAlchemy transport
    keeps its channels' sessions checked out inside an open transaction, so
    ``engine.dispose()`` cannot close them, and their metadata locks made
    ``DROP DATABASE`` wait forever (the celery-sqla clean-up hang)."""
    cur.execute(
        "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()", (name,)
    )
    for (session_id,) in cur.fetchall():
        try:
            cur.execute(f"KILL {int(session_id)}")
        except Exception:  # the session ended between the read and the KILL
            pass


def create_database(name: str) -> str:
    """A fresh, empty database ``name`` (dropped first if it exists)."""
    _check(name)
    conn = connect()
    try:
        cur = conn.cursor()
        _end_sessions(cur, name)
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    return name


def drop_database(name: str) -> None:
    _check(name)
    conn = connect()
    try:
        cur = conn.cursor()
        _end_sessions(cur, name)
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def server_version(cur: Any) -> str:
    cur.execute("SELECT VERSION()")
    return str(cur.fetchone()[0])


def durability(cur: Any) -> dict[str, str]:
    """The settings that decide what a COMMIT waits for."""
    out = {}
    for name in ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin", "innodb_flush_method"):
        cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
        row = cur.fetchone()
        out[name] = str(row[1]) if row else "?"
    return out


def describe_server() -> str:
    conn = connect()
    try:
        cur = conn.cursor()
        return f"MariaDB/MySQL {server_version(cur)} ({', '.join(f'{k}={v}' for k, v in durability(cur).items())})"
    finally:
        conn.close()


def server_cpu_seconds() -> float | None:
    """CPU seconds used so far by the whole mysqld/mariadbd process: one
    process serves every database, so other users of the server count too
    (the figure is an upper bound)."""
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm in ("mariadbd", "mysqld"):
            return harness._proc_cpu_ticks(int(entry)) / ticks
    return None
