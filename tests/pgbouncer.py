"""A real PgBouncer in transaction mode in front of the test PostgreSQL
server, started by the tests (issue 18): Debian's ``pgbouncer`` (installed
by scripts/test), on a private port of 127.0.0.1, its configuration, log
and pid file in a directory of its own.  The server itself is not touched.

Transaction mode is the one that breaks what a session holds: each
transaction may run on another server connection, so LISTEN, session
advisory locks, session ``SET``s and (before PgBouncer 1.21) prepared
statements do not survive the transaction.  ``max_client_conn`` is large
and ``default_pool_size`` small, so the tests also show how many server
connections the clients share (``SHOW POOLS`` on the admin console).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.netns import CLUSTER_PREFIX

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available() -> str:
    """Why PgBouncer cannot run here ("" when it can)."""
    if not os.path.exists(BINARY):
        return f"{BINARY} is missing (apt-get install pgbouncer; scripts/test installs it)"
    return ""


class PgBouncer:
    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432, *, pool_size: int = 20) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{CLUSTER_PREFIX}{os.getpid()}-pgbouncer-"))
        self.port = _free_port()
        self.upstream = (upstream_host, upstream_port)
        self.pool_size = pool_size
        self.proc: subprocess.Popen[Any] | None = None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgBouncer:
        why = available()
        if why:
            raise RuntimeError(why)
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        host, port = self.upstream
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            f"default_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        shutil.chown(self.dir, "postgres", "postgres")
        for path in self.dir.iterdir():
            shutil.chown(path, "postgres", "postgres")
        command = [BINARY, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]  # it refuses to run as root
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {self.log()[-2000:]}") from None
                time.sleep(0.02)

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def pools(self) -> list[dict[str, Any]]:
        """``SHOW POOLS`` of the admin console (simple queries only)."""
        import psycopg

        # The admin console speaks the simple query protocol only: a client
        # cursor sends the statement as text.
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="pgbouncer",
                             autocommit=True, prepare_threshold=None, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW POOLS")
            names = [c.name for c in cursor.description or []]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
