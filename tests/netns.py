"""A network of "hosts" made of this machine's network namespaces, for the
multi-host tests (issue 18): a database host, worker hosts, an enqueuing
host, with links that can be cut (netem loss 100 %) or slowed (netem delay
and loss).

- Each host is a namespace ``jt<pid>-<name>`` joined to the root namespace
  by a veth pair; the pair gets a /30 of 10.213.0.0/16 (host side ``.1``,
  namespace side ``.2``: directly connected, no route needed), an address
  range used nowhere else here, chosen under a machine-wide lock so that
  concurrent runs never share one.
- Faults: a partition is the link set down; a slow lossy link is a relay
  in the database host that delays each direction and holds segments back
  as TCP's loss recovery does (``SlowLink``) -- this machine's kernel has
  no netem and no tc actions.
- The database host is the root namespace: a private PostgreSQL cluster
  (``PrivatePostgres``: initdb into a temp directory, run as the postgres
  user) listens on the host-side addresses only -- the shared server on
  127.0.0.1:5432 is never touched.  Each host reaches it through its own
  link; the test process itself through the local address (not across a
  link: it is the operator, not a host under test).
- A command runs on a host as ``ip netns exec NS unshare --uts --mount``: its
  own host name (``socket.gethostname()``: worker ids, ledgers) and its own
  ``/dev/shm`` (the worker's ledgers: a peer must not read another host's),
  optionally with its wall clock shifted by libfaketime (Debian's faketime).
- Everything is torn down at the end, also on failure; namespaces, veths and
  clusters of dead test runs (the pid in their names) are removed at start.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "jt"
NET = "10.213"
LOCK = Path("/run/lock/jobtable-netns.lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir()) / "jobtable-netns.lock"
CLUSTER_PREFIX = "jobtable-netns-pg-"
#: Debian's libfaketime (package faketime), the multi-threaded build.
FAKETIME_LIB = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), Path("/nonexistent"))
_NAME = re.compile(rf"^{PREFIX}(\d+)-")
_VETH = re.compile(rf"^{PREFIX}(\d+)[hn]\d+")


class TopologyError(RuntimeError):
    pass


def run(*cmd: str, check: bool = True, timeout: float = 60.0) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    return done.stdout


def available() -> str:
    """Why this machine cannot build the topology ("" when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "unshare", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not FAKETIME_LIB.exists():
        return f"{FAKETIME_LIB} is missing (apt-get install faketime; scripts/test installs it)"
    return ""


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_stale() -> list[str]:
    """Namespaces, host-side veths and private clusters left by test runs
    whose process is gone (killed before their teardown)."""
    removed = []
    for line in run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_namespace_processes(name)
            run("ip", "netns", "delete", name, check=False)
            removed.append(name)
    for line in run("ip", "-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        link = parts[1].strip().split("@")[0]
        match = _VETH.match(link)
        if match and not _pid_alive(int(match.group(1))):
            run("ip", "link", "delete", link, check=False)
            removed.append(link)
    for path in Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}*"):
        pid = path.name[len(CLUSTER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            data = path / "data"
            if (data / "postmaster.pid").exists():
                _as_postgres(_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _kill_namespace_processes(ns: str) -> None:
    """Processes still running in a namespace of a dead run (its workers)."""
    pids = run("ip", "netns", "pids", ns, check=False).split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise TopologyError(f"{name} not found")
    return path


def _as_postgres(*cmd: str, check: bool = True, timeout: float = 120.0) -> str:
    # PostgreSQL refuses to run as root.
    return run("runuser", "-u", "postgres", "--", *cmd, check=check, timeout=timeout)


class PrivatePostgres:
    """A throw-away cluster listening on ``addresses`` only (and its own
    socket directory), trust auth for the test network."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{CLUSTER_PREFIX}{os.getpid()}-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.addresses = list(addresses)
        self.port = _free_port()
        self.started = False

    def start(self) -> PrivatePostgres:
        _as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--no-instructions", "--no-sync")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {NET}.0.0/16 trust\n")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={','.join(self.addresses)} "
            # A throw-away cluster: no durability, quick start and stop.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60",
                     "start")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop",
                         check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Host:
    """One namespace and its link to the database host."""

    name: str
    ns: str
    veth_host: str
    veth_ns: str
    gateway: str  # the host-side address: where it reaches the database
    address: str
    dir: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    # -- faults --------------------------------------------------------------
    # This machine's kernel has no netem qdisc and no tc actions (no
    # modules: "Specified qdisc kind is unknown"), so a partition is the
    # link going down, and a slow lossy link is a relay (``SlowLink``).

    def cut(self) -> None:
        """Partition: the link goes down (both ends lose carrier); the
        sockets stay open, their packets go nowhere, new connections fail --
        as when a cable, a switch port or a route fails."""
        run("ip", "link", "set", self.veth_host, "down")

    def heal(self) -> None:
        run("ip", "link", "set", self.veth_host, "up")

    # -- processes -------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this host: its namespace, host name and /dev/shm."""
        script = 'hostname "$1" && mount -t tmpfs -o size=16m,mode=1777 jtshm /dev/shm && shift && exec "$@"'
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--mount", "--propagation", "private", "--",
                "sh", "-c", script, "sh", self.name, *argv]

    def env(self, base: dict[str, str], *, clock_offset: float = 0.0) -> dict[str, str]:
        env = {k: v for k, v in base.items() if not k.startswith(("JOBTABLE_", "FAKETIME", "XDG_"))}
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)  # the temp-dir ledger fallback: this host's own
        if clock_offset:
            env["LD_PRELOAD"] = str(FAKETIME_LIB)
            env["FAKETIME"] = f"{clock_offset:+g}"  # seconds
            # Monotonic time is the same clock for every process here: only
            # the wall clock is wrong on a badly set host.
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        return env

    def start(self, argv: Sequence[str], env: dict[str, str], log_name: str = "out.log") -> subprocess.Popen[str]:
        log = open(self.dir / log_name, "a")
        try:
            proc = subprocess.Popen(self.command(argv), env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def output(self, log_name: str = "out.log") -> str:
        try:
            return (self.dir / log_name).read_text(errors="replace")
        except OSError:
            return ""

    def stop_all(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc, sig)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = [p for p in self.procs if p.poll() is None]


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # our own child's session (start_new_session)
    except ProcessLookupError:
        pass


class SlowLink:
    """A TCP relay in the database host standing for a slow, lossy link
    (this kernel has no netem): one host's database connections go through
    it, each direction delayed ``delay`` seconds, and a share ``loss`` of
    the chunks held back one retransmission timeout more (``rto``) -- what
    TCP's recovery of a lost segment costs the stream, later bytes waiting
    behind it.  Order and bytes are kept: TCP's guarantees, TCP's delays."""

    def __init__(self, address: str, upstream: tuple[str, int], *, delay: float, loss: float,
                 rto: float = 0.2, seed: int = 18) -> None:
        import random
        import threading

        self.upstream, self.delay, self.loss, self.rto = upstream, delay, loss, rto
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server((address, 0))
        self.port = int(self._server.getsockname()[1])
        self.held_back = 0
        self.chunks = 0
        threading.Thread(target=self._accept, name="slowlink-accept", daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), name="slowlink-pipe", daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        import queue
        import threading

        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def write() -> None:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=write, name="slowlink-write", daemon=True).start()
        last = 0.0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            due = time.monotonic() + self.delay
            with self._lock:
                self.chunks += 1
                if data and self._random.random() < self.loss:
                    self.held_back += 1
                    due += self.rto
            last = max(last, due)  # in order: a held-back chunk holds back the stream
            chunks.put((last, data))
            if not data:
                return

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()


class Topology:
    """The database host (this namespace, a private cluster) and ``names``
    hosts, each on its own link."""

    def __init__(self, names: Sequence[str], base: Path) -> None:
        self.names = list(names)
        self.base = base
        self.hosts: dict[str, Host] = {}
        self.pg: PrivatePostgres | None = None
        self.database = "jobtable"

    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _build(self) -> None:
        why = available()
        if why:
            raise TopologyError(why)
        remove_stale()
        pid = os.getpid()
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "a") as lock:
            # Address allocation and link creation under one machine-wide
            # lock: two runs never pick the same /30.
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = set(re.findall(rf"inet {re.escape(NET)}\.(\d+)\.", run("ip", "-o", "-4", "addr", "show")))
            free = [k for k in range(256) if str(k) not in used]
            if len(free) < len(self.names):
                raise TopologyError(f"no free /30 left in {NET}.0.0/16")
            for index, (name, k) in enumerate(zip(self.names, free)):
                ns = f"{PREFIX}{pid}-{name}"
                host = Host(name, ns, f"{PREFIX}{pid}h{index}", f"{PREFIX}{pid}n{index}",
                            f"{NET}.{k}.1", f"{NET}.{k}.2", self.base / name)
                host.dir.mkdir(parents=True, exist_ok=True)
                self.hosts[name] = host
                run("ip", "netns", "add", ns)
                run("ip", "link", "add", host.veth_host, "type", "veth", "peer", "name", host.veth_ns)
                run("ip", "link", "set", host.veth_ns, "netns", ns)
                run("ip", "addr", "add", f"{host.gateway}/30", "dev", host.veth_host)
                run("ip", "link", "set", host.veth_host, "up")
                run("ip", "-n", ns, "addr", "add", f"{host.address}/30", "dev", host.veth_ns)
                run("ip", "-n", ns, "link", "set", host.veth_ns, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        self.pg = PrivatePostgres([h.gateway for h in self.hosts.values()])
        self.pg.start()
        from sqlalchemy import create_engine, text

        admin = create_engine(self.url(None, "postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()

    def slow_link(self, host: str, *, delay: float, loss: float) -> SlowLink:
        """A ``SlowLink`` for ``host``: pass its ``port`` to ``url``."""
        assert self.pg is not None
        return SlowLink(self.hosts[host].gateway, (self.hosts[host].gateway, self.pg.port), delay=delay, loss=loss)

    def url(self, host: str | None = None, database: str | None = None, port: int | None = None) -> str:
        """The database URL as ``host`` reaches it (None: this process, the operator)."""
        assert self.pg is not None
        # The operator (this process) goes through the last host's
        # address, locally: the tests cut the others.
        address = self.hosts[host].gateway if host else list(self.hosts.values())[-1].gateway
        return f"postgresql+psycopg://postgres@{address}:{port or self.pg.port}/{database or self.database}"

    def close(self) -> None:
        for host in self.hosts.values():
            try:
                host.stop_all(signal.SIGKILL, timeout=10)
            except Exception:
                pass
            _kill_namespace_processes(host.ns)
            run("ip", "netns", "delete", host.ns, check=False)
            run("ip", "link", "delete", host.veth_host, check=False)  # gone with its peer, normally
        if self.pg is not None:
            self.pg.stop()
            self.pg = None


def python() -> str:
    return sys.executable


@contextmanager
def migrated_topology(names: Sequence[str], label: str) -> Iterator[Topology]:
    """A ``Topology`` of ``names`` with the jobtable schema migrated, for a
    test module's fixture.  Its base directory is not pytest's tmp_path
    (every pytest run of this machine's user shares that base and deletes
    all but the last three runs' -- under a concurrent run's feet): ours,
    removed at the end (stale ones by pid)."""
    from jobtable.db import engine as db_engine
    from jobtable.db import migrate

    base = Path(tempfile.mkdtemp(prefix=f"{CLUSTER_PREFIX}{os.getpid()}-{label}-"))
    os.chmod(base, 0o755)
    try:
        with Topology(names, base) as topo:
            migrate.upgrade(db_engine.create_jobtable_engine(topo.url()))
            try:
                yield topo
            finally:
                db_engine.reset_engines()  # before the cluster stops
    finally:
        shutil.rmtree(base, ignore_errors=True)
