"""Helpers of the Kombu transport tests: broker URLs, short timings, waiting
for a state with a deadline (no fixed sleeps), and a look at the table."""

from __future__ import annotations

import time
from typing import Any

from kombu import Connection
from sqlalchemy import select

from jobtable.db import engine as db_engine
from jobtable.db import tables

from .polling import wait_for  # noqa: F401  (re-exported for the transport tests)


#: Fast settings for tests: short leases and polls.
FAST_OPTIONS: dict[str, Any] = {
    "polling_interval": 0.5,
    "fallback_polling_interval": 0.02,
    "lease_seconds": 1.5,
    "eta_interval": 0.05,
    "binding_cache_seconds": 0.2,
}


def broker_url(db_url: str) -> str:
    return "jobtable+" + db_url


def connect(db_url: str, **options: Any) -> Connection:
    conn = Connection(broker_url(db_url), transport_options={**FAST_OPTIONS, **options})
    conn.connect()
    return conn


def rows(db_url: str, queue: str | None = None) -> list[Any]:
    stmt = select(tables.request).order_by(tables.request.c.id)
    if queue is not None:
        stmt = stmt.where(tables.request.c.queue == queue)
    with db_engine.get_engine(db_url).connect() as conn:
        return list(conn.execute(stmt))


def acked(db_url: str, left: int = 0, queue: str | None = None, timeout: float = 5.0) -> list[Any]:
    """The rows once ``left`` remain: acks are deleted by the consumer's ack
    writer, within a round trip or two of ``ack()`` (transport/acks.py)."""
    latest: list[Any] = []

    def settled() -> bool:
        latest[:] = rows(db_url, queue)
        return len(latest) == left

    wait_for(settled, timeout, interval=0.01, what=f"{left} row(s) left once the acks are written")
    return latest


def states(db_url: str, queue: str | None = None) -> list[str]:
    return [row.state for row in rows(db_url, queue)]


def drain(conn: Connection, queue: Any, count: int, timeout: float = 10.0, ack: bool = True) -> list[Any]:
    """Consume ``count`` messages from ``queue`` with a Consumer; returns them."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(message)
        if ack:
            message.ack()

    deadline = time.monotonic() + timeout
    with conn.Consumer(queue, callbacks=[on_message]):
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(got)} of {count} messages")
            try:
                conn.drain_events(timeout=min(remaining, 0.5))
            except TimeoutError:
                pass
    return got
