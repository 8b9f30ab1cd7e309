"""SQL of Kombu exchange bindings (``jobtable_binding``), shared across
processes so that exchanges route alike everywhere (transport/exchange.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection, Row

from . import tables

binding = tables.binding


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
