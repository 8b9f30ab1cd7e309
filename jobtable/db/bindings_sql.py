"""SQL of Kombu exchange bindings (``jobtable_binding``), shared across
processes so that exchanges route alike everywhere (transport/exchange.py);
the native worker's remote-control node: its pidbox queue removed when the
worker is dead, expired control messages purged, and what ``celery inspect``
asks of it (its members' claimed rows and finished counts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Row

from . import tables

binding = tables.binding
request = tables.request
result = tables.result
worker = tables.worker


def transport_bindings(conn: Connection, exchange: str) -> list[Row[Any]]:
    """(exchange_type, routing_key, pattern, queue, message_ttl) of ``exchange``'s bindings."""
    stmt = (
        select(
            binding.c.exchange_type, binding.c.routing_key, binding.c.pattern, binding.c.queue, binding.c.message_ttl
        )
        .where(binding.c.exchange == exchange)
        .order_by(binding.c.id)
    )
    return list(conn.execute(stmt))


def transport_all_bindings(conn: Connection) -> list[Row[Any]]:
    stmt = select(binding.c.queue, binding.c.exchange, binding.c.routing_key).order_by(binding.c.id)
    return list(conn.execute(stmt))


def transport_bind(
    conn: Connection,
    exchange: str,
    exchange_type: str,
    routing_key: str,
    pattern: str,
    queue: str,
    message_ttl: float | None = None,
) -> bool:
    """Bind ``queue`` (True: the binding is new)."""
    from .dialects import insert_binding

    return insert_binding(
        conn,
        {
            "exchange": exchange,
            "exchange_type": exchange_type,
            "routing_key": routing_key,
            "pattern": pattern,
            "queue": queue,
            "message_ttl": message_ttl,
        },
    )


def transport_unbind(conn: Connection, exchange: str, routing_key: str, queue: str) -> int:
    stmt = delete(binding).where(
        binding.c.exchange == exchange, binding.c.routing_key == routing_key, binding.c.queue == queue
    )
    return conn.execute(stmt).rowcount


def transport_unbind_queue(conn: Connection, queue: str) -> int:
    return conn.execute(delete(binding).where(binding.c.queue == queue)).rowcount


def transport_unbind_exchange(conn: Connection, exchange: str) -> int:
    return conn.execute(delete(binding).where(binding.c.exchange == exchange)).rowcount


# -- the native worker's remote-control node (Celery's pidbox) ---------------------------
#
# ``jobtable worker --celery-app`` answers Celery's remote control as one
# node per worker, named ``native_node(hostname, pid)``: its pidbox queue is
# ``<node>.<namespace>.pidbox``, bound to the ``<namespace>.pidbox`` fanout.
# A worker that stops cleanly deletes it (Kombu's auto_delete); one that was
# killed leaves it behind, and every broadcast would add a row there that
# nobody reads.  Its peers (rescue) and its next start remove them.


def native_node(hostname: str, pid: int) -> str:
    """The Celery node name of the native worker whose supervisor is ``pid`` on ``hostname``."""
    return f"jobtable.{pid}@{hostname}"


def _node_queues(node: str) -> Any:
    prefix = f"{node}."
    return (func.substr(binding.c.queue, 1, len(prefix)) == prefix) & binding.c.queue.endswith(".pidbox", autoescape=True)


def node_queues(conn: Connection, hostname: str) -> list[tuple[int, str]]:
    """(pid, queue) of the native nodes' pidbox queues bound on ``hostname``."""
    marker = f"@{hostname}."
    stmt = select(binding.c.queue).where(
        binding.c.queue.startswith("jobtable.", autoescape=True),
        binding.c.queue.contains(marker, autoescape=True),
        binding.c.queue.endswith(".pidbox", autoescape=True),
    ).distinct()
    found = []
    for queue in conn.execute(stmt).scalars():
        pid_text = queue[len("jobtable."):].split("@", 1)[0]
        if pid_text.isdigit() and queue.startswith(native_node(hostname, int(pid_text)) + "."):
            found.append((int(pid_text), queue))
    return found


def remove_nodes(conn: Connection, nodes: Sequence[tuple[str, int]]) -> int:
    """Unbind the pidbox queues of the native nodes ``(hostname, pid)`` and
    delete the control messages waiting there.  Returns the bindings removed."""
    removed = 0
    for hostname, pid in nodes:
        where = _node_queues(native_node(hostname, pid))
        queues = list(conn.execute(select(binding.c.queue).where(where).distinct()).scalars())
        if not queues:
            continue
        removed += conn.execute(delete(binding).where(where)).rowcount
        conn.execute(
            delete(request).where(request.c.queue.in_(queues), request.c.state.in_([tables.SCHEDULED, tables.PENDING]))
        )
    return removed


def purge_expired_control(conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Delete waiting remote-control messages (pidbox and reply queues)
    past their ``expires``: Celery's broadcasts expire, and in a queue that
    nobody reads (a dead node's) they would otherwise stay for ever."""
    from .dialects import dialect_of

    expired = (
        select(request.c.id)
        .where(
            request.c.state.in_([tables.SCHEDULED, tables.PENDING]),
            request.c.expires_at.is_not(None),
            request.c.expires_at < now,
            request.c.queue.endswith(".pidbox", autoescape=True),
        )
        .limit(limit)
    )
    return conn.execute(delete(request).where(dialect_of(conn).in_limited(conn, request.c.id, expired))).rowcount


# -- what a native node answers to ``celery inspect`` --------------------------------------


def node_workers(conn: Connection, hostname: str, pid: int) -> list[Row[Any]]:
    """The heartbeat rows (id, queues, running_id, started_at) of the members of supervisor ``pid``."""
    prefix = f"native:{hostname}:{pid}:"
    stmt = select(worker.c.id, worker.c.queues, worker.c.running_id, worker.c.started_at).where(
        worker.c.kind == "native", func.substr(worker.c.id, 1, len(prefix)) == prefix
    )
    return list(conn.execute(stmt.order_by(worker.c.id)))


def claimed_rows(conn: Connection, worker_ids: Sequence[str]) -> list[Row[Any]]:
    """Rows claimed by ``worker_ids`` (running or not started yet), in claim order."""
    if not worker_ids:
        return []
    stmt = select(
        request.c.id, request.c.task_id, request.c.task_name, request.c.queue, request.c.priority,
        request.c.worker_id, request.c.started_at, request.c.message,
    ).where(request.c.state == tables.RUNNING, request.c.worker_id.in_(list(worker_ids)))
    return list(conn.execute(stmt.order_by(request.c.id)))


def task_totals(conn: Connection, hostname: str, pid: int, since: datetime) -> dict[str, int]:
    """Attempts finished per task name by supervisor ``pid``'s members since ``since``."""
    prefix = f"native:{hostname}:{pid}:"
    stmt = (
        select(result.c.task_name, func.count())
        .where(result.c.ended_at >= since, func.substr(result.c.worker_id, 1, len(prefix)) == prefix)
        .group_by(result.c.task_name)
    )
    return {name: int(n) for name, n in conn.execute(stmt)}
