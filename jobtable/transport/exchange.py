"""Exchange bindings kept in ``jobtable_binding``, so a queue bound in one
process receives what another process publishes (Celery's remote control
and events need this).

Publishers cache an exchange's bindings for ``binding_cache_seconds``.  A
lookup that finds no queue re-reads the table (at most every
``_MISS_REFRESH`` seconds), so a reply queue bound a moment ago by another
process — ``celery inspect`` — still gets its reply.  On PostgreSQL every
binding change sends a NOTIFY, and a process that listens (a consumer: a
Celery worker publishing its task events) drops its cache on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic

from sqlalchemy.engine import Connection

from ..db import bindings_sql

_MISS_REFRESH = 0.05

#: (routing_key, pattern or None, queue), the shape Kombu's exchange types use.
Binding = tuple[str, "str | None", str]


@dataclass
class _Entry:
    exchange_type: str | None
    table: list[Binding]
    read_at: float
    #: Message TTL (seconds) of bound queues that have one.
    ttl: dict[str, float]


class BindingCache:
    def __init__(self, read: Callable[[], Connection], ttl: float) -> None:
        self._read = read
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def _load(self, exchange: str) -> _Entry:
        with self._read() as conn:
            rows = bindings_sql.transport_bindings(conn, exchange)
        entry = _Entry(
            exchange_type=rows[0].exchange_type if rows else None,
            table=[(row.routing_key, row.pattern or None, row.queue) for row in rows],
            read_at=monotonic(),
            ttl={row.queue: float(row.message_ttl) for row in rows if row.message_ttl is not None},
        )
        with self._lock:
            self._entries[exchange] = entry
        return entry

    def get(self, exchange: str, *, max_age: float | None = None) -> _Entry:
        entry = self._entries.get(exchange)
        age = self._ttl if max_age is None else max_age
        if entry is None or monotonic() - entry.read_at > age:
            entry = self._load(exchange)
        return entry

    def refresh_after_miss(self, exchange: str) -> _Entry | None:
        """A fresher table when the cached one routed nowhere, else None."""
        entry = self._entries.get(exchange)
        if entry is not None and monotonic() - entry.read_at <= _MISS_REFRESH:
            return None
        return self._load(exchange)

    def invalidate(self, exchange: str | None = None) -> None:
        with self._lock:
            if exchange is None:
                self._entries.clear()
            else:
                self._entries.pop(exchange, None)
