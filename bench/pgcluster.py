"""A private, throw-away PostgreSQL cluster for scenarios that restart the
server (``killrestart.py``): the shared server on port 5432 is never touched.

``initdb`` (trust auth) into a new temp directory, ``pg_ctl start`` on its own
port with its socket in /tmp; ``restart()`` is ``pg_ctl restart -m fast``;
``destroy()`` stops it and removes the directory.  PostgreSQL refuses to run
as root, so when we are root every command runs as the ``postgres`` user
(``runuser``) and the directory belongs to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


class ClusterError(RuntimeError):
    pass


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]  # the newest version installed
    path = shutil.which(name)
    if path is None:
        raise ClusterError(f"{name} not found (looked in /usr/lib/postgresql/*/bin and PATH)")
    return path


class PrivateCluster:
    def __init__(self, port: int = 5439, socket_dir: str = "/tmp") -> None:
        if port == 5432:
            raise ClusterError("refusing port 5432: that is the shared server")
        self.port = port
        self.socket_dir = socket_dir
        self.dir = Path(tempfile.mkdtemp(prefix="jobtable-killbench-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.as_user = os.geteuid() == 0
        self.started = False
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.as_user:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-800:]}\n"
                               f"{self.log_tail()}")
        return done

    def _options(self) -> str:
        # Listen on loopback only; our own port and socket directory.
        return f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"

    def create(self) -> PrivateCluster:
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-instructions")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", self._options(), "-l", str(self.log), "-w",
                  "-t", "60", "start")
        self.started = True
        return self

    def restart(self, mode: str = "fast") -> float:
        """``pg_ctl restart -m mode``, waiting until it accepts connections;
        returns the seconds it took."""
        t0 = time.perf_counter()
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", self._options(), "-l", str(self.log), "-m", mode,
                  "-w", "-t", "60", "restart")
        return time.perf_counter() - t0

    def destroy(self) -> None:
        if self.started:
            try:
                self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            except (ClusterError, subprocess.TimeoutExpired):
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
