"""A private PostgreSQL primary with a streaming replica, for the failover
tests (issue 18): both on 127.0.0.1 at ports of their own, with socket
directories of their own -- the shared server on 5432 is never touched.

- The primary is ``initdb``'s, with synchronous replication to the replica
  (``synchronous_standby_names = '*'``, ``synchronous_commit = on``): a
  commit returns once the replica has the WAL, so a primary that dies
  loses nothing it acknowledged.  Set once the replica runs (``ALTER
  SYSTEM``), so the replica's copy of the configuration (``pg_basebackup
  -R``) does not wait for a standby of its own once promoted.
- The replica may run with its wall clock shifted (libfaketime): after a
  failover the new primary's clock is another one, as a server on another
  machine's may be.
- ``fail_over`` stops the primary as a crash does (``-m immediate``), waits
  ``gap`` seconds (the time an operator or a failover manager takes), and
  promotes the replica.
- ``url`` is a libpq multi-host URL naming both, ``target_session_attrs=
  read-write``: a client connects to whichever accepts writes.

Clusters of dead test runs (the pid in their directory's name) are removed
by ``netns.remove_stale``, which this module's clusters share a prefix with.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.netns import CLUSTER_PREFIX, FAKETIME_LIB, _as_postgres, _free_port, _pg_bin, remove_stale

ADDRESS = "127.0.0.1"
DATABASE = "jobtable"


def remove_stale_pairs() -> None:
    """Pairs of test runs whose process is gone: their servers stopped
    (``netns.remove_stale`` then removes the directories)."""
    for path in Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}*-pair-*"):
        pid = path.name[len(CLUSTER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for name in ("primary", "replica"):
                if (path / name / "postmaster.pid").exists():
                    _as_postgres(_pg_bin("pg_ctl"), "-D", str(path / name), "-m", "immediate", "-w", "stop",
                                 check=False)
    remove_stale()


class PrimaryReplica:
    def __init__(self, *, replica_clock_offset: float = 0.0) -> None:
        remove_stale_pairs()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{CLUSTER_PREFIX}{os.getpid()}-pair-"))
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o755)
        self.primary_data = self.dir / "primary"
        self.replica_data = self.dir / "replica"
        self.primary_port = _free_port()
        self.replica_port = _free_port()
        self.replica_clock_offset = replica_clock_offset
        self.running: set[str] = set()
        self.promoted = False

    # -- URLs ---------------------------------------------------------------

    def url(self, database: str = DATABASE) -> str:
        """Both servers; libpq picks the one that accepts writes."""
        return (
            f"postgresql+psycopg://postgres@/{database}?host={ADDRESS}:{self.primary_port}"
            f"&host={ADDRESS}:{self.replica_port}&target_session_attrs=read-write"
        )

    def primary_url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://postgres@{ADDRESS}:{self.primary_port}/{database}"

    def replica_url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://postgres@{ADDRESS}:{self.replica_port}/{database}"

    # -- life -----------------------------------------------------------------

    def start(self) -> PrimaryReplica:
        _as_postgres(_pg_bin("initdb"), "-D", str(self.primary_data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--no-instructions", "--no-sync")
        self._start("primary", self.primary_data, self.primary_port, "-c synchronous_commit=on")
        engine = create_engine(self.primary_url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
        engine.dispose()
        # -R: standby.signal and primary_conninfo; -X stream: the WAL of the
        # copy itself.  The server's own replication line of pg_hba.conf
        # (initdb: trust for 127.0.0.1) lets it in.
        _as_postgres(_pg_bin("pg_basebackup"), "-h", ADDRESS, "-p", str(self.primary_port), "-U", "postgres",
                     "-D", str(self.replica_data), "-R", "-X", "stream", "-c", "fast", "--no-sync")
        self._start("replica", self.replica_data, self.replica_port, "", clock_offset=self.replica_clock_offset)
        # Synchronous from now on: set after the copy, so the replica's own
        # configuration (copied) does not wait for a standby once promoted,
        # and not before it, or the commits above would wait for none.
        engine = create_engine(self.primary_url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("ALTER SYSTEM SET synchronous_standby_names = '*'"))
            conn.execute(text("SELECT pg_reload_conf()"))
        engine.dispose()
        self.wait_synchronous()
        return self

    def _start(self, name: str, data: Path, port: int, extra: str, clock_offset: float = 0.0) -> None:
        sockets = self.dir / f"{name}-sockets"
        sockets.mkdir(exist_ok=True)
        shutil.chown(sockets, "postgres", "postgres")
        options = (
            f"-p {port} -k {sockets} -c listen_addresses={ADDRESS} "
            # Throw-away clusters: no fsync (a stop, even -m immediate, loses
            # no page the kernel has), quick checkpoints.
            f"-c fsync=off -c full_page_writes=off -c max_connections=200 {extra}"
        )
        env: list[str] = []
        if clock_offset:
            env = ["env", f"LD_PRELOAD={FAKETIME_LIB}", f"FAKETIME={clock_offset:+g}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
        _as_postgres(*env, _pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.dir / f"{name}.log"),
                     "-w", "-t", "60", "start")
        self.running.add(name)

    def wait_synchronous(self, timeout: float = 30.0) -> None:
        """Until the primary names the replica its synchronous standby."""
        engine = create_engine(self.primary_url("postgres"))
        deadline = time.monotonic() + timeout
        try:
            while True:
                with engine.connect() as conn:
                    states = list(conn.execute(text("SELECT state, sync_state FROM pg_stat_replication")))
                if ("streaming", "sync") in [tuple(row) for row in states]:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the replica is not a synchronous standby: {states}")
                time.sleep(0.05)
        finally:
            engine.dispose()

    def stop_primary(self) -> None:
        """As a crash: no shutdown checkpoint, clients' sockets closed."""
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.primary_data), "-m", "immediate", "-w", "-t", "30", "stop")
        self.running.discard("primary")

    def promote(self) -> None:
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.replica_data), "-w", "-t", "60", "promote")
        self.promoted = True

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        for name, data in (("primary", self.primary_data), ("replica", self.replica_data)):
            if name in self.running:
                _as_postgres(_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop",
                             check=False)
        self.running.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrimaryReplica:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
