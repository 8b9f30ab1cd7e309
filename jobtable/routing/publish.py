"""Publishing routed queues' messages through Kombu (RabbitMQ), confirmed.

The message is the one the table would store (``messages.task_message``:
Celery's task protocol v2), sent as Celery's ``apply_async`` sends it: the
body ``[args, kwargs, embed]`` as JSON, the protocol's headers, properties
``correlation_id``/``reply_to``/``priority``, persistent delivery.  So a
Celery worker with the Jobs registered (``register_jobs``) runs it too.

One producer per process, from ``kombu.pools`` (a process's threads share
the pool's few).  Publisher confirms are on, waited for per batch rather
than per message: the channel is put in confirm mode once, a batch of up
to ``BATCH`` messages is written, then the broker's acks (``multiple``
acks count) are awaited.  A nack or a timeout fails the call; what had been
confirmed stays published (at-least-once: a caller that retries may
publish a message twice, see docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import kombu as _kombu
from kombu import pools as _pools
from kombu.utils import collections as _collections

# Kombu has no type hints: its objects are Any here (mypy's untyped calls).
kombu: Any = _kombu
pools: Any = _pools
eqhash: Any = _collections.eqhash

from ..exceptions import JobtableError
from ..settings import get_settings
from . import routes

logger = logging.getLogger("jobtable.routing")

#: Messages written before their confirms are awaited.
BATCH = 500
#: Seconds to wait for a batch's confirms.
CONFIRM_TIMEOUT = 30.0
#: RabbitMQ's replicated queue type: what routing declares (Celery workers
#: consuming the queue must declare it the same way, see docs/scaling.md).
QUEUE_ARGUMENTS = {"x-queue-type": "quorum"}


class PublishError(JobtableError):
    """A routed message could not be published (broker unreachable, or it refused it)."""


def routed_queue(name: str) -> Any:
    """The Kombu queue of a routed queue, declared alike by publisher and consumer."""
    return kombu.Queue(name, routing_key=name, durable=True, queue_arguments=dict(QUEUE_ARGUMENTS), no_declare=False)


# -- connections per process ----------------------------------------------------------

_lock = threading.Lock()
_pid = 0
_connections: dict[str, Any] = {}
_declared: set[tuple[str, str]] = set()
#: The parent's objects after a fork: kept referenced, never closed (their
#: sockets are the parent's connections; closing would end them there).
_inherited: list[Any] = []


def connection_for(url: str) -> Any:
    """This process's Kombu connection to ``url`` (lazy: it connects on use)."""
    global _pid
    with _lock:
        if _pid != os.getpid():
            if _connections:
                _inherited.extend(_connections.values())
                _inherited.extend(list(pools.producers.values()) + list(pools.connections.values()))
                # kombu.pools are keyed by the URL's fields: a child would get
                # its parent's pool (and sockets) back.  Drop, do not close.
                dict.clear(pools.producers)
                dict.clear(pools.connections)
            _connections.clear()
            _declared.clear()
            _pid = os.getpid()
        conn = _connections.get(url)
        if conn is None:
            timeout = float(get_settings().connect_timeout)
            conn = _connections[url] = kombu.Connection(url, connect_timeout=timeout, heartbeat=0)
        return conn


class _Confirms:
    """Publisher-confirm bookkeeping of one channel (delivery tags count from 1)."""

    def __init__(self, channel: Any) -> None:
        self.published = 0
        self.acked = 0
        self.nacked = 0
        #: Messages the broker returned (mandatory): no queue of that name.
        self.returned: list[Any] = []
        channel.confirm_select()
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.events["basic_return"].add(self._return)

    def _return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self.returned.append(message)

    def _ack(self, delivery_tag: int, multiple: bool) -> None:
        self.acked = max(self.acked, delivery_tag) if multiple else self.acked + 1

    def _nack(self, delivery_tag: int, multiple: bool) -> None:
        self.nacked += 1
        self._ack(delivery_tag, multiple)


def _confirms(channel: Any) -> _Confirms:
    state = getattr(channel, "_jobtable_confirms", None)
    if state is None:
        state = _Confirms(channel)
        channel._jobtable_confirms = state
    return state


def _wait_confirms(producer: Any, state: _Confirms, queue: str) -> None:
    deadline = time.monotonic() + CONFIRM_TIMEOUT
    while state.acked < state.published:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishError(
                f"The broker of queue {queue!r} did not confirm {state.published - state.acked} message(s) "
                f"within {CONFIRM_TIMEOUT:g} s; they may or may not have been queued."
            )
        try:
            producer.connection.drain_events(timeout=min(left, 1.0))
        except TimeoutError:
            continue
    if state.nacked:
        count, state.nacked = state.nacked, 0
        raise PublishError(f"The broker of queue {queue!r} refused {count} message(s) (nack).")


def _send(producer: Any, queue: str, envelope: dict[str, Any]) -> None:
    properties = envelope.get("properties") or {}
    producer.publish(
        envelope["body"],
        exchange="",
        routing_key=queue,
        headers=envelope.get("headers") or {},
        content_type=envelope.get("content-type") or "application/json",
        content_encoding=envelope.get("content-encoding") or "utf-8",
        priority=int(properties.get("priority") or 0),
        delivery_mode=2,
        # Returned, not dropped, when the queue is gone (deleted by hand
        # since this process declared it): see _publish_once.
        mandatory=True,
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to") or None,
    )


def publish(queue: str, envelopes: Sequence[dict[str, Any]]) -> None:
    """Publish ``envelopes`` (stored-message dicts) to the routed ``queue``,
    confirmed in batches; PublishError (password masked) when it fails."""
    if not envelopes:
        return
    url = get_settings().broker_routes.get(queue)
    if url is None:
        raise PublishError(f"Queue {queue!r} is not routed to a broker (broker_routes).")
    for attempt in (1, 2):
        sent = [0]
        try:
            _publish_once(url, queue, envelopes, sent)
            return
        except PublishError:
            _forget(url)  # its channel's confirm counts are not to be trusted again
            raise
        except Exception as exc:
            # Connection and channel errors (and kombu's pool timeouts): this
            # connection and its producers are not used again.  Tried once
            # more only when nothing was sent (a connection that died while
            # idle, e.g. across a broker restart): a retry after a partial
            # send would publish messages twice.
            _forget(url)
            if attempt == 1 and not sent[0]:
                logger.info("Publishing to queue %r: reconnecting to %s (%s).", queue, routes.display(url),
                            type(exc).__name__)
                continue
            raise PublishError(
                f"Publishing to queue {queue!r} on {routes.display(url)} failed "
                f"({type(exc).__name__}: {_first_line(exc)})."
            ) from None


def _publish_once(url: str, queue: str, envelopes: Sequence[dict[str, Any]], sent: list[int]) -> None:
    conn = connection_for(url)
    with pools.producers[conn].acquire(block=True, timeout=CONFIRM_TIMEOUT) as producer:
        key = (url, queue)
        if key not in _declared:
            routed_queue(queue).declare(channel=producer.channel)
            _declared.add(key)
        state = _confirms(producer.channel)
        for start in range(0, len(envelopes), BATCH):
            for envelope in envelopes[start:start + BATCH]:
                _send(producer, queue, envelope)
                state.published += 1
                sent[0] += 1
            _wait_confirms(producer, state, queue)
            if state.returned:
                # RabbitMQ returns (then acks) what no queue took: declare
                # the queue again and send those once more.
                returned, state.returned = state.returned, []
                routed_queue(queue).declare(channel=producer.channel)
                for message in returned:
                    producer.channel.basic_publish(message, exchange="", routing_key=queue, mandatory=True)
                    state.published += 1
                _wait_confirms(producer, state, queue)
                if state.returned:
                    count, state.returned = len(state.returned), []
                    raise PublishError(f"The broker of queue {queue!r} returned {count} message(s): no such queue.")


def _forget(url: str) -> None:
    with _lock:
        conn = _connections.pop(url, None)
        _declared.difference_update({key for key in _declared if key[0] == url})
    if conn is None:
        return
    try:
        for group in (pools.producers, pools.connections):
            if eqhash(conn) in group:
                group[conn].force_close_all()
                del group[conn]
    except Exception:
        pass
    try:
        conn.release()
    except Exception:
        pass


def publish_rows(rows: Iterable[dict[str, Any]]) -> None:
    """Publish new request rows (``messages.row_values`` dicts) by queue."""
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_queue.setdefault(row["queue"], []).append(json.loads(row["message"]))
    for queue, envelopes in by_queue.items():
        publish(queue, envelopes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def depths(queues: Iterable[str]) -> dict[str, int | None]:
    """Ready messages per routed queue, from the broker (a passive
    ``queue_declare``: it creates nothing); None when the broker cannot be
    asked or the queue does not exist yet.  Unacked deliveries (running or
    prefetched) are not counted, as RabbitMQ's ``message_count``."""
    routes_now = get_settings().broker_routes
    out: dict[str, int | None] = {}
    for queue in queues:
        url = routes_now.get(queue)
        if url is None:
            continue
        try:
            with kombu.Connection(url, connect_timeout=float(get_settings().connect_timeout)) as conn:
                ok = conn.default_channel.queue_declare(queue=queue, passive=True)
                out[queue] = int(ok.message_count)
        except Exception as exc:  # noqa: BLE001 - a screen shows "unknown", never a traceback
            logger.info("Depth of routed queue %r on %s unknown (%s).", queue, routes.display(url), type(exc).__name__)
            out[queue] = None
    return out
