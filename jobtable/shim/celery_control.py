"""Celery's remote control, answered by ``jobtable worker --celery-app``.

One node per worker: a thread of the supervisor listens on the app's
control exchange (pidbox) as ``jobtable.<pid>@<hostname>`` (Celery names a
worker ``celery@<hostname>``; the pid keeps two native workers of one host
apart).  ``celery inspect`` / ``celery control`` get Celery's reply shapes
(celery/worker/control.py), read from the table -- the worker holds no
task in memory: what its members claimed is in ``jobtable_request``, what
they run in ``jobtable_worker.running_id`` (updated within 0.5 s).

Answered: ping, hello, clock, report, conf (hidden settings masked),
registered, active, reserved, scheduled (always empty: ETA tasks wait in the
table, not in a worker), query_task, stats, active_queues, revoked, revoke
(recorded in ``jobtable_revoke``, honoured at claim by every worker),
rate_limit (stored in ``jobtable_rate_limit.rate``, read by every worker's
next takes) and shutdown (the worker's graceful stop, as SIGTERM).  Anything
else -- a command that would change a running pool (time_limit,
add_consumer, cancel_consumer, pool_grow...) -- answers ``{"error": ...}``
naming the command and what to do instead.

The node's pidbox queue is auto_delete: cancelled at exit (atexit), so a
stopped worker leaves no binding; a killed one is removed by its peers'
rescue and by the next worker started on its host (``db/bindings_sql``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .. import pids
from ..ratelimits import parse_rate
from ..safetext import safe_repr
from ..worker import rate_epoch
from ..db import bindings_sql, ratelimit_sql, revokes_sql
from ..db import clock as db_clock
from ..db import engine as db_engine

logger = logging.getLogger("jobtable.celery")

#: Why each command that cannot work on the native worker does not.
UNSUPPORTED = {
    "time_limit": "time limits are read when the worker starts: set the task's time_limit and restart the worker",
    "add_consumer": "queues are chosen when the worker starts: restart it with --queue NAME",
    "cancel_consumer": "queues are chosen when the worker starts: restart it without that --queue",
    "pool_grow": "the pool size is fixed: restart the worker with --max-processes N",
    "pool_shrink": "the pool size is fixed: restart the worker with --max-processes N",
    "autoscale": "the pool size is fixed: restart the worker with --max-processes N",
    "pool_restart": "restart the worker instead (SIGTERM, then start it again; --reload in development)",
    "enable_events": "task events are off on jobtable (states are in its tables: jobtable list, the dashboard)",
    "disable_events": "task events are off on jobtable (states are in its tables: jobtable list, the dashboard)",
}


def unsupported(command: str) -> dict[str, str]:
    why = UNSUPPORTED.get(command, "the command is not implemented there")
    return {"error": f"jobtable's native worker cannot do {command!r}: {why}."}


class Handlers(dict[str, Callable[..., Any]]):
    """Kombu's Node looks a command up here: an unknown one answers an error naming it."""

    def __missing__(self, command: str) -> Callable[..., Any]:
        return lambda state, **_: unsupported(command)


class _ForkGuard:
    """Keeps the supervisor's forks out of the control thread's database calls.

    The pool members are forked from the supervisor while this thread runs.
    A fork taken while the thread is inside a driver call copies that call's
    locks held (SQLite's global VFS mutex, a pool's mutex) into the child,
    which then hangs in its first connect for good. The thread holds this
    guard around each of its calls; ``os.fork`` takes it first (an at-fork
    hook), so a fork waits for the call in progress (at most one
    ``drain_events`` timeout) and the thread waits while a fork is wanted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted = threading.Event()

    def register(self) -> None:
        os.register_at_fork(before=self._before, after_in_parent=self._after_parent, after_in_child=self._after_child)

    def _before(self) -> None:
        self._wanted.set()
        self._lock.acquire()

    def _after_parent(self) -> None:
        self._wanted.clear()
        self._lock.release()

    def _after_child(self) -> None:
        # The child has no control thread; a fresh guard for forks of its own.
        self._lock = threading.Lock()
        self._wanted = threading.Event()

    def __enter__(self) -> None:
        while self._wanted.is_set():  # a fork is waiting: let it go first
            time.sleep(0.001)
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


#: How long one guarded ``drain_events`` may hold a fork back (seconds).
_DRAIN_TIMEOUT = 0.1


class ControlNode:
    """The worker's node: its name, its handlers, and the thread that serves them."""

    def __init__(
        self, app: Any, *, pool: str, revoked_ids: set[str] | None = None, hostname: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.app = app
        self.pool = pool
        self.host = hostname or socket.gethostname()
        self.pid = pid or os.getpid()
        self.name = bindings_sql.native_node(self.host, self.pid)
        self.started = datetime.now(timezone.utc)
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = _ForkGuard()
        #: Task ids revoked by broadcast while listening (the threads pool's members read it).
        self.revoked_ids: set[str] = set() if revoked_ids is None else revoked_ids

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self.remove_dead_nodes()
        self._guard.register()
        self._thread = threading.Thread(target=self._serve, name="jobtable-celery-control", daemon=True)
        self._thread.start()
        # The pool is forked after this: let the thread's set-up (connect,
        # declare, bind: locks taken in several libraries) end first, so no
        # member is forked holding a copy of a lock taken mid-way.
        self._listening.wait(10.0)
        atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the consumer (its auto_delete queue and binding go) and wait for the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    def remove_dead_nodes(self) -> None:
        """Bindings left on this host by native workers that were killed (their pid is gone)."""
        try:
            with db_engine.get_engine().begin() as conn:
                dead = [
                    (self.host, pid)
                    for pid, _ in bindings_sql.node_queues(conn, self.host)
                    if pid != self.pid and not pids.pid_alive(pid, None)
                ]
                if dead and bindings_sql.remove_nodes(conn, dead):
                    logger.info("Removed the remote-control queues of %d stopped native worker(s).", len(dead))
        except db_engine.ERRORS as exc:
            logger.warning("Could not remove the remote-control queues of stopped workers: %s", exc)

    def _serve(self) -> None:
        guard = self._guard
        while not self._stop.is_set():
            try:
                with guard:
                    conn = self.app.connection_for_read()
                    mailbox = self.app.control.mailbox(conn)
                    # Replies through this connection, never the app's
                    # producer pool: the pool members are forked from this
                    # process and must not inherit a used broker pool.
                    mailbox._producer_pool = None
                    node = mailbox.Node(self.name, state=None, handlers=self.handlers())
                    consumer = node.listen(channel=conn.channel())
                self._listening.set()
                try:
                    while not self._stop.is_set():
                        with guard:
                            try:
                                conn.drain_events(timeout=_DRAIN_TIMEOUT)
                            except socket.timeout:
                                pass
                finally:
                    with guard:
                        try:
                            consumer.cancel()
                        finally:
                            conn.release()
            except Exception as exc:
                if self._stop.is_set():
                    return
                logger.warning("Celery control listener: %s; reconnecting in 1s.", exc)
                self._stop.wait(1.0)

    # -- the commands --------------------------------------------------------------------------

    def handlers(self) -> Handlers:
        from celery.worker import control

        app_state = _AppState(self.app, self.name)
        reuse = {name: getattr(control, name) for name in ("registered", "clock", "report")}
        own: dict[str, Callable[..., Any]] = {
            "ping": lambda state, **_: {"ok": "pong"},
            "hello": self.hello,
            "conf": self.conf,
            "active": self.active,
            "reserved": self.reserved,
            "scheduled": lambda state, **_: [],
            "query_task": self.query_task,
            "stats": self.stats,
            "active_queues": self.active_queues,
            "revoked": self.revoked,
            "revoke": self.revoke,
            "rate_limit": self.rate_limit,
            "shutdown": self.shutdown,
            "heartbeat": lambda state, **_: None,
        }
        table = Handlers({name: _bound(fun, app_state) for name, fun in reuse.items()})
        table.update(own)
        for alias, name in (("dump_active", "active"), ("dump_reserved", "reserved"), ("dump_schedule", "scheduled"),
                            ("dump_revoked", "revoked"), ("dump_tasks", "registered"), ("dump_conf", "conf")):
            table[alias] = table[name]
        return table

    def hello(self, state: Any, from_node: str = "", revoked: Any = None, **_: Any) -> Any:
        if from_node == self.name:
            return None
        # Revokes live in the table (every worker reads them at claim): nothing to hand over.
        return {"revoked": {}, "clock": self.app.clock.forward()}

    def conf(self, state: Any, with_defaults: bool = False, **_: Any) -> Any:
        from celery.app.utils import filter_hidden_settings
        from celery.utils.serialization import jsonify

        table = filter_hidden_settings(self.app.conf.table(with_defaults=with_defaults))
        return jsonify(table, keyfilter=lambda key: isinstance(key, str) and not key.startswith("__"),
                       unknown_type_filter=lambda value: None)

    def _claimed(self) -> tuple[list[Any], list[Any], dict[str, Any]]:
        """(running, not started, members by worker id) of this worker's members."""
        with db_engine.get_engine().connect() as conn:
            members = {row.id: row for row in bindings_sql.node_workers(conn, self.host, self.pid)}
            rows = bindings_sql.claimed_rows(conn, list(members))
        running_ids = {m.running_id for m in members.values() if m.running_id}
        running = [row for row in rows if row.id in running_ids]
        waiting = [row for row in rows if row.id not in running_ids]
        return running, waiting, members

    def _info(self, row: Any, safe: bool = False, started: bool = True) -> dict[str, Any]:
        """A claimed row as Celery's ``Request.info()``."""
        headers: dict[str, Any] = {}
        args: Any = []
        kwargs: Any = {}
        properties: dict[str, Any] = {}
        try:
            envelope = json.loads(row.message)
            headers = envelope.get("headers") or {}
            properties = envelope.get("properties") or {}
            body = envelope.get("body")
            if properties.get("body_encoding") == "base64":
                import base64

                body = base64.b64decode(body or "").decode("utf-8")
            decoded = json.loads(body) if isinstance(body, str) else body
            if isinstance(decoded, list) and len(decoded) >= 2:
                args, kwargs = decoded[0], decoded[1]
        except (ValueError, TypeError, AttributeError):
            pass
        delivery = properties.get("delivery_info") or {}
        return {
            "id": row.task_id,
            "name": row.task_name,
            "args": headers.get("argsrepr", repr(args)) if safe else args,
            "kwargs": headers.get("kwargsrepr", repr(kwargs)) if safe else kwargs,
            "type": row.task_name,
            "hostname": row.worker_id,
            "time_start": row.started_at.timestamp() if started and row.started_at else None,
            "acknowledged": False,
            "delivery_info": {
                "exchange": delivery.get("exchange", ""),
                "routing_key": row.queue,
                "priority": row.priority,
                "redelivered": False,
            },
            "worker_pid": self.pid,
        }

    def active(self, state: Any, safe: bool = False, **_: Any) -> list[dict[str, Any]]:
        return [self._info(row, safe) for row in self._claimed()[0]]

    def reserved(self, state: Any, **_: Any) -> list[dict[str, Any]]:
        return [self._info(row, started=False) for row in self._claimed()[1]]

    def query_task(self, state: Any, ids: Any = None, **_: Any) -> dict[str, Any]:
        wanted = {ids} if isinstance(ids, str) else set(ids or [])
        running, waiting, _ = self._claimed()
        found: dict[str, Any] = {}
        for row in waiting:
            if row.task_id in wanted:
                found[row.task_id] = ("reserved", self._info(row, started=False))
        for row in running:
            if row.task_id in wanted:
                found[row.task_id] = ("active", self._info(row))
        return found

    def stats(self, state: Any, **_: Any) -> dict[str, Any]:
        with db_engine.get_engine().connect() as conn:
            members = bindings_sql.node_workers(conn, self.host, self.pid)
            total = bindings_sql.task_totals(conn, self.host, self.pid, self.started)
        queues = sorted({q for m in members for q in json.loads(m.queues or "[]")})
        conninfo = self.app.connection_for_read()
        try:
            broker = conninfo.info()  # passwords are never in it (transport/brokerurl.py)
            broker.pop("password", None)
        finally:
            conninfo.release()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "total": total,
            "pid": self.pid,
            "clock": str(self.app.clock.value),
            "uptime": round((datetime.now(timezone.utc) - self.started).total_seconds()),
            "pool": {
                "implementation": f"jobtable:{self.pool}",
                "max-concurrency": len(members),
                "processes": [m.id for m in members],
                "max-tasks-per-child": None,
                "put-guarded-by-semaphore": False,
                "timeouts": [],
                "writes": {},
            },
            "broker": broker,
            "prefetch_count": 0,
            "queues": queues,
            "rusage": {
                "utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss,
                "minflt": usage.ru_minflt, "majflt": usage.ru_majflt, "nvcsw": usage.ru_nvcsw,
                "nivcsw": usage.ru_nivcsw,
            },
        }

    def active_queues(self, state: Any, **_: Any) -> list[dict[str, Any]]:
        from kombu.entity import Queue

        with db_engine.get_engine().connect() as conn:
            members = bindings_sql.node_workers(conn, self.host, self.pid)
        names = sorted({q for m in members for q in json.loads(m.queues or "[]")})
        known = {q.name: q for q in (self.app.amqp.queues or {}).values()}
        out = []
        for name in names:
            queue = known.get(name) or Queue(name, routing_key=name)  # type: ignore[no-untyped-call]
            out.append(dict(queue.as_dict(recurse=True)))
        return out

    def revoked(self, state: Any, **_: Any) -> list[str]:
        """The ids revoked in the database (what every worker honours), plus any heard only by broadcast."""
        with db_engine.get_engine().connect() as conn:
            stored = revokes_sql.listed(conn, db_clock.utcnow(), kind=revokes_sql.TASK)
        return sorted({row.value for row in stored} | self.revoked_ids)

    def revoke(self, state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **_: Any) -> Any:
        ids = [task_id] if isinstance(task_id, str) else [str(i) for i in task_id or []]
        self.revoked_ids.update(ids)
        # Recorded (again: the jobtable broker recorded it at publish) so that
        # a broadcast through another broker holds too; terminate=True adds
        # the stop mark the supervisor acts on (worker/cancels.py).
        marks = [(revokes_sql.TASK, "", i) for i in ids]
        if terminate:
            marks += [(revokes_sql.TERMINATE, "", i) for i in ids]
        try:
            with db_engine.get_engine().begin() as conn:
                revokes_sql.add(conn, marks, db_clock.utcnow())
        except db_engine.ERRORS as exc:
            logger.warning("Could not record the revoke of %s: %s", ids, exc)
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}

    def rate_limit(self, state: Any, task_name: Any = None, rate_limit: Any = None, **_: Any) -> dict[str, str]:
        """Celery's ``rate_limit`` command, for every worker at once: the rate
        is stored in the task's ``jobtable_rate_limit`` row, which every
        worker's members read before their next take (at once on the
        workers that heard this broadcast, ``rate_epoch``; within
        ``ratelimit_sql.OVERRIDES_TTL`` on any other, by its supervisor's ``rates`` duty).  Replies in Celery's shape."""
        try:
            rate = parse_rate(rate_limit, "rate_limit")
        except ValueError as exc:
            return {"error": f"Invalid rate limit string {safe_repr(rate_limit, 80)}: {exc}"}
        if not isinstance(task_name, str) or task_name not in self.app.tasks:
            logger.error("Rate limit attempt for unknown task %s", safe_repr(task_name, 120))
            return {"error": "unknown task"}
        try:
            with db_engine.get_engine().begin() as conn:
                ratelimit_sql.set_rate(conn, task_name, rate or 0.0)
            rate_epoch.bump()  # this worker's members re-read the rates before their next take
        except db_engine.ERRORS as exc:
            logger.warning("Could not store the rate limit of %s: %s", task_name, exc)
            return {"error": f"the rate limit of {task_name} could not be stored: {type(exc).__name__}"}
        if not rate:
            logger.info("Rate limits disabled for tasks of type %s", task_name)
            return {"ok": "rate limit disabled successfully"}
        logger.info("New rate limit for tasks of type %s: %s.", task_name, rate_limit)
        return {"ok": "new rate limit set successfully"}

    def shutdown(self, state: Any, msg: str = "Got shutdown from remote", **_: Any) -> dict[str, str]:
        logger.warning("%s", msg)
        os.kill(self.pid, signal.SIGTERM)  # the supervisor's graceful stop
        return {"ok": "shutting down"}


class _AppState:
    """What Celery's own handlers read of their ``state`` argument (the app only)."""

    def __init__(self, app: Any, hostname: str) -> None:
        self.app = app
        self.hostname = hostname


def _bound(fun: Callable[..., Any], app_state: _AppState) -> Callable[..., Any]:
    return lambda state, **kwargs: fun(app_state, **kwargs)


_node: ControlNode | None = None


def start(app: Any, *, pool: str, revoked_ids: set[str] | None = None) -> ControlNode:
    """Start this worker's node (once per process: the supervisor's)."""
    global _node
    if _node is None:
        _node = ControlNode(app, pool=pool, revoked_ids=revoked_ids)
        _node.start()
        logger.info("Answering Celery's remote control as %s.", _node.name)
    return _node


def current() -> ControlNode | None:
    return _node
