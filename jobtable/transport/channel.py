# mypy: disallow-untyped-calls=False
"""The Kombu channel: messages are rows of ``jobtable_request``.

A message is one row; its state is the broker state:

- publish inserts the row (``scheduled`` when its ETA is in the future, so a
  Celery worker never holds a countdown in memory; ``pending`` otherwise);
- a consumer claims rows (``running``, its id in ``worker_id``, a lease in
  ``lease_expires_at``) in batches up to the QoS prefetch;
- ack deletes the row (in batches, by the process's ack writer: acks.py);
  requeue, recover and closing with unacked messages flip it back to
  ``pending`` in place — no copy, no duplicate.

Delivery tags are ``"<row id>:<delivery number>"``, so an ack from any
thread needs no lookup.  Every database operation takes its own pooled
connection: channel methods are safe to call from several threads
(Celery 5.7 acks from the pool's result thread).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport import virtual
from kombu.utils.uuid import uuid
from sqlalchemy.engine import Connection, Row

from .. import badrows, limits, message_checks, messages
from ..db import bindings_sql, clock, operations_sql, revokes_sql, tables, transport_sql
from ..db.dialects import notify_bindings_changed, wake_queues
from .protocol import TransportAPI, row_id
from .revoke_broadcasts import asks_revoked, merge_into_celery_worker, revokes_in, runs_celery_revokes

__all__ = ["Channel", "QoS", "row_id"]

logger = logging.getLogger(__name__)


class QoS(virtual.QoS):
    """Kombu's prefetch bookkeeping, with acks and requeues written to the
    table as they happen (from whichever thread calls them)."""

    channel: Channel

    def ack(self, delivery_tag: Any) -> None:
        self.channel._settle([delivery_tag], requeue=False)
        self._quick_ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self.channel._settle([delivery_tag], requeue=requeue)
        self._quick_ack(delivery_tag)

    def held_tags(self) -> list[Any]:
        """Tags delivered and not yet acked (callable from any thread)."""
        for _ in range(10):
            try:
                delivered = list(self._delivered)
                dirty = set(self._dirty)
                break
            except RuntimeError:  # resized by the consuming thread meanwhile
                continue
        else:
            return []
        return [tag for tag in delivered if tag not in dirty]

    def restore_unacked(self) -> list[Any]:
        """Requeue every unacked message in one statement.

        Never returns failures: if the database is unreachable the rows stay
        claimed and come back when their lease lapses (no emergency dump).
        """
        self._flush()
        tags = list(self._delivered)
        if tags:
            try:
                self.channel._settle(tags, requeue=True)
            except Exception as exc:  # the lease brings them back
                logger.warning("jobtable: could not requeue %d unacked message(s): %s", len(tags), exc)
        self._delivered.clear()
        return []


class Quiet:
    """Queues found empty, and the notification mark taken before that claim."""

    def __init__(self, queues: list[str], mark: object, until: float) -> None:
        self.queues = queues
        self.mark = mark
        #: Look anyway after the polling interval: notifications are hints
        #: (``wakeups=False``, a LISTEN connection that dropped).
        self.until = until

    def holds(self, queues: list[str], transport: TransportAPI) -> bool:
        return queues == self.queues and monotonic() < self.until and transport.mark(queues) == self.mark


class Channel(virtual.Channel):
    QoS = QoS
    connection: TransportAPI

    #: Fanout exchanges store one row per bound queue (bindings are in the DB).
    supports_fanout = True
    #: Priorities are stored as given: higher first, any SMALLINT.
    min_priority = tables.PRIORITY_MIN
    max_priority = tables.PRIORITY_MAX

    def __init__(self, connection: TransportAPI, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        # Kept past close(): QoS restores unacked messages after Kombu has
        # detached the channel from its transport.
        self._transport = connection
        #: Queues declared auto_delete by this channel.
        self._auto_delete: set[str] = set()
        #: Set after an empty claim: no need to look again until a wake-up
        #: names one of those queues (Celery's control channel is idle
        #: while the task channel is busy: a query per cycle for nothing).
        self._quiet: Quiet | None = None
        #: When this channel last claimed (see Transport.refill_now).
        self.last_claim = 0.0

    # -- database access -------------------------------------------------------------

    def _write(self) -> Any:
        return self._transport.write_connection()

    def _read(self) -> Connection:
        return self._transport.read_connection()

    # -- publishing ---------------------------------------------------------------------

    def _inplace_augment_message(self, message: dict[str, Any], exchange: str, routing_key: str) -> None:
        # Text bodies (JSON: Celery's default) are stored as they are, so the
        # native worker and SQL users can read them; binary ones as base64.
        body = message["body"]
        encoding: str | None = None
        if isinstance(body, (bytes, bytearray)):
            try:
                body = bytes(body).decode("utf-8")
            except UnicodeDecodeError:
                body, encoding = self.codecs["base64"].encode(body), "base64"
        message["body"] = body
        properties = message["properties"]
        properties["body_encoding"] = encoding
        properties.pop("delivery_tag", None)
        properties.setdefault("delivery_info", {}).update(exchange=exchange, routing_key=routing_key)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        exchange = ((message.get("properties") or {}).get("delivery_info") or {}).get("exchange")
        ttl = self._transport.bindings.get(exchange).ttl if exchange else {}
        self._insert([queue], message, ttl=ttl)

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        bindings = self._transport.bindings
        entry = bindings.get(exchange)
        if not entry.table:
            entry = bindings.refresh_after_miss(exchange) or entry
        queues = sorted({queue for _, _, queue in entry.table})
        # A Celery revoke is recorded with its broadcast, and even when no
        # worker is bound to hear it: workers started later check the table.
        revokes = revokes_in(exchange, message)
        if queues or revokes:
            self._insert(queues, message, fanout=True, ttl=entry.ttl, revokes=revokes)

    def _insert(
        self,
        queues: Sequence[str],
        message: dict[str, Any],
        fanout: bool = False,
        ttl: dict[str, float] | None = None,
        revokes: Sequence[tuple[str, str, Any]] = (),
    ) -> None:
        now = clock.utcnow()
        # Checked before anything is written: a message the table cannot
        # hold (headers that are not JSON, a lone surrogate, a time past
        # year 9999, over max_message_size) is refused to the publisher with
        # an EnqueueError naming the part, and no copy of it is stored.
        expires_at = _expires_at(message, now)
        rows = []
        for queue in queues:
            # Priorities are SMALLINT; AMQP's go 0-255: clamped, not refused.
            source = f"Kombu publish to queue {limits.short(queue)}"
            row = message_checks.checked_row(
                message, queue, now, source=source, clamp_priority=True, escape_surrogates=True
            )
            row["expires_at"] = expires_at
            queue_ttl = (ttl or {}).get(queue)
            if queue_ttl is not None:
                # The queue's x-message-ttl: counted from now, like AMQP.
                limit = now + timedelta(seconds=queue_ttl)
                row["expires_at"] = limit if expires_at is None else min(expires_at, limit)
            if fanout:
                # Copies of one broadcast must not collide on the key.
                row["concurrency_key"] = None
            rows.append(row)
        self._transport.insert_published(rows, revokes)
        if rows:
            self._transport.published(rows)

    # -- consuming ----------------------------------------------------------------------

    def _claim(self, queues: Sequence[str], limit: int) -> list[tuple[dict[str, Any], str]]:
        """Claim up to ``limit`` live messages; expired ones met on the way
        are dropped and replaced (a few rounds at most)."""
        for _ in range(10):
            delivered, claimed = self._claim_once(queues, limit)
            if delivered or claimed == 0:
                return delivered
        return []

    def _claim_once(self, queues: Sequence[str], limit: int) -> tuple[list[tuple[dict[str, Any], str]], int]:
        transport = self._transport
        transport.before_claim()
        now = clock.utcnow()
        lease = now + timedelta(seconds=transport.options.lease_seconds)
        consumer = transport.consumer_id
        with transport.write_connection() as conn:
            rows = transport_sql.transport_claim(
                conn,
                queues,
                limit,
                consumer_id=consumer,
                lease_expires_at=lease,
                async_commit=transport.async_commit,
            )
            expired = [row.id for row in rows if row.expires_at is not None and row.expires_at <= now]
            if expired:
                transport_sql.transport_delete(conn, expired, consumer, transport.async_commit)
            # Revoked messages (db/revokes_sql.py) end REVOKED below, their
            # rows gone.  A Celery worker's task consumer also gets them,
            # with the revoke put in its memory first, so it discards them
            # itself as on any broker (task_revoked, REVOKED in its backend:
            # the same result row, an upsert) and nothing can run them.
            revoked = revokes_sql.revoked_entries(conn, [row for row in rows if row.id not in expired], now)
            callbacks = self.connection._callbacks
            handed = {
                row.id: revoked[row.id]
                for row in rows
                if row.id in revoked and runs_celery_revokes(callbacks.get(row.queue))
            }
            # Each row decoded on its own: an undecodable one becomes a dead
            # letter (badrows.py) and the rest of the batch is delivered.
            delivered: list[tuple[dict[str, Any], str]] = []
            bad: list[tuple[int, str]] = []
            for row in rows:
                if row.id in expired or (row.id in revoked and row.id not in handed):
                    continue
                envelope = badrows.decode_envelope(row.message)
                if isinstance(envelope, badrows.BadRow):
                    bad.append((row.id, envelope.reason))
                else:
                    delivered.append((_payload(row, envelope), row.queue))
        if any(queue.endswith(".pidbox") and asks_revoked(payload) for payload, queue in delivered):
            with transport.read_connection() as reader:
                listed = revokes_sql.listed(reader, now)
            merge_into_celery_worker([(r.kind, r.name, r.value) for r in listed])
        if revoked:
            with transport.engine.begin() as tx:
                revokes_sql.end_revoked_held(tx, sorted(revoked), consumer, now)
            logger.info(
                "jobtable: %d revoked message(s) recorded REVOKED (%d handed to the Celery worker to discard)",
                len(revoked), len(handed),
            )
        if handed:
            merge_into_celery_worker(list(handed.values()))
        if bad:
            # One transaction (the claim's connection autocommits on
            # PostgreSQL): the row leaves the queue only with its result.
            with transport.engine.begin() as tx:
                buried = badrows.bury(tx, consumer, bad, now)
            logger.error(
                "jobtable: %d undecodable message(s) moved to DEAD_LETTER results: %s",
                len(buried),
                "; ".join(reason for _, reason in bad)[:500],
            )
        return delivered, len(rows)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        claimed = self._claim([queue], 1)
        if not claimed:
            raise Empty()
        return claimed[0][0]

    def _get_many(self, queues: Sequence[str], timeout: float | None = None) -> None:
        """Claim a batch across all consumed queues and deliver it (called by
        virtual.Channel.drain_events when QoS allows more messages)."""
        limit = self._transport.options.batch_size
        room = self.qos.can_consume_max_estimate()
        if room is not None:
            limit = min(limit, room)
        if limit <= 0:
            raise Empty()
        if room is not None and not self._transport.refill_now(self, room):
            raise Empty()  # the transport comes back once more room is free
        wanted = list(dict.fromkeys(queues))
        transport = self._transport
        transport.before_claim()  # due ETAs become ready (and change the mark)
        if self._quiet is not None and self._quiet.holds(wanted, transport):
            raise Empty()
        mark = transport.mark(wanted)  # before the claim: nothing added later goes unseen
        self.last_claim = monotonic()
        claimed = self._claim(wanted, limit)
        if not claimed:
            if mark is not None:
                self._quiet = Quiet(wanted, mark, monotonic() + transport.options.polling_interval)
            raise Empty()
        self._quiet = None
        deliver = self.connection._deliver
        for index, (payload, queue) in enumerate(claimed):
            try:
                deliver(payload, queue)
            except BaseException:
                # Not handed to the application: give the rest back now
                # rather than after the lease.
                rest = [p["properties"]["delivery_tag"] for p, _ in claimed[index + 1 :]]
                if rest:
                    self._settle(rest, requeue=True)
                raise

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> None:
        # As virtual.Channel.basic_consume, except that a no_ack delivery
        # (Celery's pidbox, replies, events) leaves the table at once instead
        # of waiting for an ack that never comes.
        self._tag_to_queue[consumer_tag] = queue
        self._active_queues.append(queue)
        self._transport.consuming()  # after the queue is listed: the heartbeat row names it

        def _callback(raw_message: dict[str, Any]) -> Any:
            message = self.Message(raw_message, channel=self)
            if no_ack:
                self._settle([message.delivery_tag], requeue=False)
            else:
                self.qos.append(message, message.delivery_tag)
            return callback(message)

        _callback.consumer_callback = callback  # type: ignore[attr-defined]  # revoke_broadcasts.runs_celery_revokes
        self.connection._callbacks[queue] = _callback
        self._consumers.add(consumer_tag)
        self._reset_cycle()

    def basic_qos(self, *args: Any, **kwargs: Any) -> None:
        super().basic_qos(*args, **kwargs)
        self._transport.wake()  # a larger prefetch: claim more now

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        self._transport.consuming()
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._settle([message.delivery_tag], requeue=False)
        return message

    def _settle(self, tags: Sequence[Any], *, requeue: bool) -> None:
        ids = [row_id(tag) for tag in tags]
        if not ids:
            return
        transport = self._transport
        if requeue:
            with transport.write_connection() as conn:
                queues = transport_sql.transport_requeue(conn, ids, transport.consumer_id, transport.async_commit)
                wake_queues(conn, queues)
        else:
            # Deleted in batches by the process's ack writer (acks.py).
            transport.acks.add(ids)
        # Either way QoS has room again: a consumer waiting in drain_events
        # (acks come from Celery's pool threads) claims at once.
        transport.wake()

    def close(self) -> None:
        try:
            self._transport.acks.flush()
        except Exception as exc:  # the ack writer retries; leases cover the rest
            logger.warning("jobtable: could not write acks while closing a channel: %s", exc)
        super().close()

    def _restore(self, message: Any) -> None:
        self._settle([message.delivery_tag], requeue=True)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)

    # -- queues ---------------------------------------------------------------------------

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        # Queue(message_ttl=..., expires=...) become x-message-ttl & co., as
        # on RabbitMQ and Redis; queue_declare reads x-message-ttl.
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def queue_declare(self, queue: str | None = None, passive: bool = False, **kwargs: Any) -> Any:
        name = queue or f"amq.gen-{uuid()}"
        limits.check_name("queue", name, source="Kombu queue_declare")
        arguments = kwargs.get("arguments") or {}
        ttl = arguments.get("x-message-ttl")
        if ttl is not None:
            # Recorded with the queue's bindings (queue_bind), so publishers
            # in other processes apply it.
            self._transport.queue_ttl[name] = float(ttl) / 1000.0
        if kwargs.get("auto_delete"):
            self._auto_delete.add(name)
        return super().queue_declare(name, passive, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> None:
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if queue in self._auto_delete and queue not in self._active_queues:
            # AMQP auto_delete: the last consumer went away (Celery's event,
            # pidbox and reply queues), so stop routing messages to it.
            self._auto_delete.discard(queue)
            try:
                self.queue_delete(queue)
            except Exception as exc:  # closing while the database is down
                logger.warning("jobtable: could not delete auto_delete queue %r: %s", queue, exc)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Queues exist implicitly: rows name their queue."""

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        with self._read() as conn:
            return transport_sql.transport_queue_exists(conn, queue)

    def _size(self, queue: str) -> int:
        self._transport.acks.flush()  # this connection reads its own acks
        with self._read() as conn:
            return transport_sql.transport_queue_size(conn, queue)

    def _purge(self, queue: str) -> int:
        self._transport.acks.flush()
        with self._write() as conn:
            return operations_sql.purge(conn, queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.queue_delete(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> int:
        if if_empty and self._size(queue):
            return 0
        self._transport.acks.flush()
        with self._write() as conn:
            removed = operations_sql.purge(conn, queue)
            if bindings_sql.transport_unbind_queue(conn, queue):
                notify_bindings_changed(conn)
        self.state.queue_bindings_delete(queue)
        self._transport.bindings.invalidate()
        return removed

    # -- exchanges and bindings (in jobtable_binding) -----------------------------------------

    def exchange_declare(
        self,
        exchange: str | None = None,
        type: str = "direct",
        durable: bool = False,
        auto_delete: bool = False,
        arguments: Any = None,
        nowait: bool = False,
        passive: bool = False,
    ) -> None:
        name = exchange or f"amq.{type or 'direct'}"
        if passive and name not in self.state.exchanges:
            if self._transport.bindings.get(name).exchange_type is None:
                raise ChannelError(
                    f"NOT_FOUND - no exchange {name!r}", (50, 10), "Channel.exchange_declare", "404"
                )
            return
        super().exchange_declare(exchange, type, durable, auto_delete, arguments, nowait, passive)

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        with self._write() as conn:
            if bindings_sql.transport_unbind_exchange(conn, exchange):
                notify_bindings_changed(conn)
        self.state.exchanges.pop(exchange, None)
        self._transport.bindings.invalidate(exchange)

    def queue_bind(
        self, queue: str, exchange: str | None = None, routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        exchange = exchange or "amq.direct"
        # Bindings are rows too: names the columns cannot hold are refused
        # here, not by the database with its SQL text.
        limits.check_name("queue", queue, source="Kombu queue_bind")
        limits.check_name("exchange", exchange, source="Kombu queue_bind")
        limits.check_name("routing_key", routing_key or "", source="Kombu queue_bind", allow_empty=True)
        kind = self._exchange_type(exchange)
        exchange_type: Any = self.exchange_types[kind]  # instances, whatever Kombu's annotation says
        routing_key, pattern, queue = exchange_type.prepare_bind(queue, exchange, routing_key, arguments)
        ttl = self._transport.queue_ttl.get(queue)
        with self._write() as conn:
            if bindings_sql.transport_bind(conn, exchange, kind, routing_key or "", pattern or "", queue, ttl):
                notify_bindings_changed(conn)
        self.state.binding_declare(queue, exchange, routing_key, arguments)
        self._transport.bindings.invalidate(exchange)

    def queue_unbind(
        self, queue: str, exchange: str | None = None, routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        exchange = exchange or "amq.direct"
        with self._write() as conn:
            if bindings_sql.transport_unbind(conn, exchange, routing_key or "", queue):
                notify_bindings_changed(conn)
        self.state.binding_delete(queue, exchange, routing_key)
        self._transport.bindings.invalidate(exchange)

    def list_bindings(self) -> Iterator[tuple[str, str, str]]:
        with self._read() as conn:
            rows = bindings_sql.transport_all_bindings(conn)
        return iter([(row.queue, row.exchange, row.routing_key) for row in rows])

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        return self._transport.bindings.get(exchange).table

    def _exchange_type(self, exchange: str, default: str = "direct") -> str:
        declared = self.state.exchanges.get(exchange)
        if declared is not None:
            return str(declared["type"])
        return self._transport.bindings.get(exchange).exchange_type or default

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        return self.exchange_types[self._exchange_type(exchange, default)]

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        if exchange:
            found = self._route(exchange, routing_key)
            if not found and self._transport.bindings.refresh_after_miss(exchange) is not None:
                found = self._route(exchange, routing_key)
            if found:
                return sorted(found)
        return list(super()._lookup(exchange, routing_key, default))

    def _route(self, exchange: str, routing_key: str) -> set[str]:
        return set(self.typeof(exchange).lookup(self.get_table(exchange), exchange, routing_key, None) or ())


def _payload(row: Row[Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The stored envelope (decoded by badrows) as Kombu's virtual Message expects it."""
    properties = payload.get("properties") or {}
    payload["properties"] = properties
    properties["delivery_tag"] = f"{row.id}:{row.deliveries}"
    info = properties.get("delivery_info") or {}
    properties["delivery_info"] = info
    info.setdefault("exchange", "")
    info.setdefault("routing_key", row.queue)
    # Celery's Reject(requeue=True) and acks_late tasks read this.
    info["redelivered"] = row.deliveries > 1
    properties.setdefault("priority", row.priority)
    if payload.get("headers") is None:
        payload["headers"] = {}
    return payload


def _expires_at(message: dict[str, Any], now: datetime) -> datetime | None:
    """The earlier of the ``expires`` header (Celery, Kombu's pidbox; 0 means
    never) and the AMQP ``expiration`` property (milliseconds from now)."""
    candidates = []
    expires = (message.get("headers") or {}).get("expires")
    if expires not in (None, "", 0, 0.0):
        try:
            candidates.append(messages.parse_time(expires))
        except (TypeError, ValueError, OverflowError, OSError):
            pass
    expiration = (message.get("properties") or {}).get("expiration")
    if expiration not in (None, ""):
        try:
            candidates.append(now + timedelta(milliseconds=float(expiration)))
        except (TypeError, ValueError, OverflowError):
            pass  # not a number, or too far away to be anything but "never"
    found = [c for c in candidates if c is not None]
    return min(found) if found else None
