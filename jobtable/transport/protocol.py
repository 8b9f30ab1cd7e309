"""What a Transport's channels and its lease keeper use of it.

Laid out like Kombu's Redis transport: the Transport (transport.py) owns what
a connection's channels share -- engine, options, binding cache, ack writer,
wake-ups, the consumer id -- and runs the consume loop; Channel and QoS
(channel.py) do the message operations; the LeaseKeeper (leases.py) keeps
the leases of what they hold.  Kombu keeps its triad in one module; here each
part has its own, and the Transport creates the other two.  So channel.py and
leases.py see their Transport through this Protocol, below all three,
instead of importing transport.py, which imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine

from .acks import AckBuffer
from .exchange import BindingCache
from .options import TransportOptions


def row_id(delivery_tag: Any) -> int:
    """The row of a delivery tag (``"<row id>:<delivery number>"``)."""
    return int(str(delivery_tag).split(":", 1)[0])


class TransportAPI(Protocol):
    """The Transport as its channels and lease keeper see it."""

    options: TransportOptions
    bindings: BindingCache
    #: Acked row ids waiting for their (batched) DELETE.
    acks: AckBuffer
    #: x-message-ttl (seconds) of queues declared through this connection.
    queue_ttl: dict[str, float]
    #: Kombu's (virtual.Transport): queue name -> the consumer's callback.
    _callbacks: dict[str, Callable[..., Any]]

    @property
    def engine(self) -> Engine: ...

    @property
    def consumer_id(self) -> str: ...

    @property
    def async_commit(self) -> bool: ...

    def write_connection(self) -> AbstractContextManager[Connection]: ...

    def read_connection(self) -> Connection: ...

    def insert_published(self, rows: Sequence[dict[str, Any]], revokes: Sequence[tuple[str, str, Any]] = ()) -> None: ...

    def published(self, rows: Sequence[dict[str, Any]]) -> None: ...

    def before_claim(self) -> None: ...

    def mark(self, queues: Sequence[str]) -> object | None: ...

    def wake(self) -> None: ...

    def consuming(self) -> None: ...

    def refill_now(self, channel: Any, room: int) -> bool: ...

    def held_tags(self) -> set[str]: ...

    def held_row_ids(self) -> list[int]: ...

    def active_queues(self) -> list[str]: ...

    #: Kombu's (virtual.Transport): hand a claimed message to its callback.
    def _deliver(self, message: Any, queue: str) -> None: ...
