"""Conformance of the Kombu transport, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import TRANSPORT_ALIASES, get_transport_cls
from sqlalchemy.exc import OperationalError

import jobtable
from jobtable.db import tables
from jobtable.exceptions import ConfigurationError, DatabaseUnavailable, SchemaNotMigrated
from jobtable.transport import Transport

from .transport_helpers import FAST_OPTIONS, acked, broker_url, connect, drain, rows, states, wait_for
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


# -- selecting the transport ---------------------------------------------------------


def test_import_registers_aliases() -> None:
    assert jobtable is not None
    for scheme in ("jobtable", "jobtable+postgresql+psycopg", "jobtable+sqlite"):
        assert TRANSPORT_ALIASES[scheme] == "jobtable.transport:Transport"
        assert get_transport_cls(scheme) is Transport


def test_connection_url_selects_transport(db_url: str) -> None:
    with connect(db_url) as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.transport.db_url == db_url
        assert conn.transport.driver_type != "sql"
        assert conn.supports_exchange_type("fanout")


def test_failover_switch_resolves_whole_scheme(db_url: str) -> None:
    # Kombu's failover parses the URL and looks the whole scheme up.
    conn = Connection(broker_url(db_url), transport_options=FAST_OPTIONS)
    conn.switch(broker_url(db_url))
    assert conn.transport_cls == broker_url(db_url).split("://")[0]
    with conn:
        conn.connect()
        queue = conn.SimpleQueue("failover")
        queue.put({"x": 1})
        assert queue.get(timeout=5).payload == {"x": 1}
        queue.close()


def test_transport_options_are_read_and_not_given_to_the_engine(db_url: str) -> None:
    conn = Connection(
        broker_url(db_url),
        transport_options={"lease_seconds": "7", "batch_size": 3, "wakeups": "false", "max_retries": 3},
    )
    with conn:
        conn.connect()
        options = conn.transport.options
        assert (options.lease_seconds, options.batch_size, options.wakeups) == (7.0, 3, False)
        # The engine is the process's shared one, built from the URL alone
        # (on MySQL, engine.py adds charset=utf8mb4).
        assert set(conn.transport.engine.url.query) <= {"charset"}


def test_connect_fails_on_unreachable_database(dialect: str, tmp_path: object) -> None:
    if dialect == "postgresql":
        url = "jobtable+postgresql+psycopg://postgres@127.0.0.1:1/nope"
    else:
        url = f"jobtable+sqlite:///{tmp_path}/missing-dir/x.sqlite3"
    conn = Connection(url, connect_timeout=1)
    if dialect == "postgresql":
        # Kombu's own error, after its retries, naming the database (no
        # password) and what to check.
        with pytest.raises(KombuOperationalError, match="Cannot connect to the jobtable database postgresql") as info:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        assert "Connection refused" in str(info.value) and "broker_url is right" in str(info.value)
    else:
        # A directory that is not there is a setting to fix, not an outage to retry.
        with pytest.raises(ConfigurationError, match="missing-dir' first"):
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)


def test_connect_fails_on_unmigrated_database(tmp_path: object) -> None:
    conn = Connection(f"jobtable+sqlite:///{tmp_path}/empty.sqlite3")
    with pytest.raises(SchemaNotMigrated):
        conn.connect()


# -- publish, consume, queues -------------------------------------------------------------


def test_simple_queue_roundtrip_and_counts(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("simple")
        for i in range(3):
            queue.put({"n": i})
        assert queue.qsize() == 3
        assert conn.default_channel.queue_declare("simple").message_count == 3
        first = queue.get_nowait()  # basic_get: one message
        assert first.payload == {"n": 0}
        assert first.delivery_info["redelivered"] is False
        assert queue.qsize() == 2  # unacked messages are not counted
        first.ack()
        assert queue.get(timeout=5).payload == {"n": 1}
        queue.close()


def test_non_celery_messages_keep_body_headers_and_properties(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue("plain", Exchange("plain"), "plain")
        producer = Producer(conn.default_channel)
        producer.publish(b"\x00\xffbinary", exchange=queue.exchange, routing_key="plain", declare=[queue],
                         content_type="application/x-raw", content_encoding="binary", headers={"h": "v"})
        producer.publish("texte accentué", exchange=queue.exchange, routing_key="plain", serializer="json")
        got = drain(conn, queue, 2)
        assert got[0].body == b"\x00\xffbinary"
        assert got[0].headers["h"] == "v"
        assert got[1].decode() == "texte accentué"
        assert acked(db_url) == []


def test_purge_and_delete(db_url: str) -> None:
    with connect(db_url) as conn:
        channel = conn.default_channel
        queue = Queue("purged", Exchange("purged"), "purged")
        producer = Producer(channel)
        for i in range(4):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="purged", declare=[queue])
        assert queue(channel).purge() == 4
        assert rows(db_url) == []
        producer.publish({"i": 9}, exchange=queue.exchange, routing_key="purged")
        assert len(rows(db_url)) == 1
        queue(channel).delete()
        assert rows(db_url) == []
        # Unbound: publishing to the exchange routes nowhere now.
        producer.publish({"i": 10}, exchange=queue.exchange, routing_key="purged")
        assert rows(db_url) == []


def test_one_consumer_several_queues(db_url: str) -> None:
    with connect(db_url) as conn:
        queues = [Queue(name, Exchange(name), name) for name in ("qa", "qb", "qc")]
        producer = Producer(conn.default_channel)
        for queue in queues:
            producer.publish({"q": queue.name}, exchange=queue.exchange, routing_key=queue.name, declare=[queue])
        got = drain(conn, queues, 3)
        assert sorted(m.payload["q"] for m in got) == ["qa", "qb", "qc"]
        assert acked(db_url) == []


def test_batch_fetch_respects_prefetch(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue("batch", Exchange("batch"), "batch")
        producer = Producer(conn.default_channel)
        for i in range(10):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="batch", declare=[queue])
        held: list = []
        with Consumer(conn, [queue], callbacks=[lambda body, message: held.append(message)], prefetch_count=3):
            conn.drain_events(timeout=5)
            assert 1 <= len(held) <= 3
            running = states(db_url).count(tables.RUNNING)
            assert running == len(held)
            for message in held:
                message.ack()
        assert len(acked(db_url, 10 - len(held))) == 10 - len(held)


# -- acks, requeues, recovery ---------------------------------------------------------------


def test_ack_deletes_reject_requeue_and_recover_flip_in_place(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("acks")
        queue.put({"a": 1})
        (original,) = rows(db_url)
        message = queue.get(timeout=5)
        assert states(db_url) == [tables.RUNNING]
        message.requeue()
        (after,) = rows(db_url)
        assert (after.id, after.state) == (original.id, tables.PENDING)
        again = queue.get(timeout=5)
        assert again.delivery_info["redelivered"] is True
        queue.channel.basic_recover(requeue=True)
        assert [(r.id, r.state) for r in rows(db_url)] == [(original.id, tables.PENDING)]
        third = queue.get(timeout=5)
        third.reject()  # no requeue: dropped
        assert acked(db_url) == []
        queue.close()


def test_closing_with_unacked_messages_puts_them_back_without_copies(db_url: str) -> None:
    conn = connect(db_url)
    queue = conn.SimpleQueue("closing")
    for i in range(3):
        queue.put({"i": i})
    ids = [r.id for r in rows(db_url)]
    held = [queue.get_nowait() for _ in range(2)]  # basic_get: exactly two
    assert len(held) == 2
    conn.release()
    assert [(r.id, r.state) for r in rows(db_url)] == [(i, tables.PENDING) for i in ids]
    with connect(db_url) as conn2:
        queue2 = conn2.SimpleQueue("closing")
        got = [queue2.get(timeout=5) for _ in range(3)]
        assert [m.payload["i"] for m in got] == [0, 1, 2]
        assert [m.delivery_info["redelivered"] for m in got] == [True, True, False]
        for m in got:
            m.ack()
        queue2.close()
    assert rows(db_url) == []


def test_held_messages_keep_their_lease(db_url: str) -> None:
    # A live consumer renews its lease: another consumer never gets the
    # message even after several lease periods.
    with connect(db_url) as holder, connect(db_url) as other:
        queue = holder.SimpleQueue("held")
        queue.put({"long": True})
        message = queue.get(timeout=5)
        first_lease = rows(db_url)[0].lease_expires_at
        wait_for(lambda: rows(db_url)[0].lease_expires_at > first_lease, timeout=5, what="lease renewal")
        other_queue = other.SimpleQueue("held")
        deadline = time.monotonic() + 2 * FAST_OPTIONS["lease_seconds"]
        while time.monotonic() < deadline:
            with pytest.raises(other_queue.Empty):
                other_queue.get(timeout=0.2)
        message.ack()
        assert acked(db_url) == []
        other_queue.close()
        queue.close()


def test_lapsed_lease_is_recovered_by_another_consumer(db_url: str) -> None:
    # Simulate a consumer that died: a claimed row whose lease has passed.
    with connect(db_url) as dead:
        queue = dead.SimpleQueue("lapsed")
        queue.put({"x": 1})
        message = queue.get(timeout=5)
        # Forget it without acking, and stop renewing (as kill -9 would).
        message.channel.qos._delivered.clear()
        dead.transport._keeper.stop()
        with connect(db_url) as alive:
            queue2 = alive.SimpleQueue("lapsed")
            again = queue2.get(timeout=10)
            assert again.payload == {"x": 1}
            assert again.delivery_info["redelivered"] is True
            again.ack()
            queue2.close()
        assert rows(db_url) == []


# -- ETA, expiry, priority ------------------------------------------------------------------


def _publish(conn: Connection, queue: Queue, body: object, **kwargs: object) -> None:
    Producer(conn.default_channel).publish(
        body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue], **kwargs
    )


def test_eta_messages_wait_in_the_table_until_due(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue("eta", Exchange("eta"), "eta")
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.0)
        _publish(conn, queue, {"late": True}, headers={"eta": eta.isoformat()})
        _publish(conn, queue, {"now": True})
        assert sorted(states(db_url)) == [tables.PENDING, tables.SCHEDULED]
        delivered = []
        for _ in range(2):
            (message,) = drain(conn, queue, 1)
            delivered.append((message.payload, datetime.now(timezone.utc)))
        # The late one never before its ETA; whatever came before the ETA
        # was the due one (on a loaded machine both may come after it).
        by_payload = {str(payload): at for payload, at in delivered}
        assert set(by_payload) == {str({"late": True}), str({"now": True})}
        assert by_payload[str({"late": True})] >= eta
        if delivered[0][1] < eta:
            assert delivered[0][0] == {"now": True}


def test_expired_messages_are_not_delivered(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue("exp", Exchange("exp"), "exp")
        past = datetime.now(timezone.utc) - timedelta(seconds=1)
        _publish(conn, queue, {"expired": "header"}, headers={"expires": past.isoformat()})
        _publish(conn, queue, {"expired": "property"}, expiration=0.001)
        _publish(conn, queue, {"expires": "never"}, headers={"expires": 0})
        _publish(conn, queue, {"fine": True}, headers={"expires": (past + timedelta(hours=1)).isoformat()})
        got = drain(conn, queue, 2)
        assert [m.payload for m in got] == [{"expires": "never"}, {"fine": True}]
        assert acked(db_url) == []


def test_priority_higher_first_fifo_within_priority(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue("prio", Exchange("prio"), "prio")
        sent = [(0, "a"), (9, "b"), (5, "c"), (9, "d"), (0, "e"), (5, "f"), (1, "g")]
        for priority, name in sent:
            _publish(conn, queue, name, priority=priority)
        simple = conn.SimpleQueue(queue)
        order = []
        for _ in sent:
            message = simple.get(timeout=5)
            order.append(message.payload)
            message.ack()
        assert order == ["b", "d", "c", "f", "g", "a", "e"]
        simple.close()


# -- exchanges across connections ----------------------------------------------------------


def test_direct_topic_and_fanout_exchanges_across_connections(db_url: str) -> None:
    # Bindings made through one connection route what another publishes
    # (separate Connections share nothing but the database, like processes).
    with connect(db_url) as consumer_conn, connect(db_url) as publisher:
        direct = Exchange("ex.direct", "direct")
        topic = Exchange("ex.topic", "topic")
        fanout = Exchange("ex.fanout", "fanout")
        bound = [
            Queue("d1", direct, "k1"),
            Queue("t1", topic, "stock.#"),
            Queue("t2", topic, "*.eur"),
            Queue("f1", fanout),
            Queue("f2", fanout),
        ]
        channel = consumer_conn.default_channel
        for queue in bound:
            queue(channel).declare()
        producer = Producer(publisher.default_channel)
        producer.publish("direct", exchange="ex.direct", routing_key="k1")
        producer.publish("nowhere", exchange="ex.direct", routing_key="k2")
        producer.publish("topic", exchange="ex.topic", routing_key="stock.usd")
        producer.publish("both", exchange="ex.topic", routing_key="stock.eur")
        producer.publish("broadcast", exchange="ex.fanout", routing_key="")
        by_queue: dict[str, list[str]] = {}
        for row in rows(db_url):
            by_queue.setdefault(row.queue, []).append(row)
        assert sorted(by_queue) == ["d1", "f1", "f2", "t1", "t2"]
        got = drain(consumer_conn, bound, 6)
        seen = sorted((m.delivery_info["routing_key"], m.payload) for m in got)
        assert seen == sorted(
            [("k1", "direct"), ("stock.usd", "topic"), ("stock.eur", "both"), ("stock.eur", "both"),
             ("", "broadcast"), ("", "broadcast")]
        )
        # Bindings are listed from the database, and unbinding is seen by others.
        listed = set(consumer_conn.default_channel.list_bindings())
        assert ("f1", "ex.fanout", "") in listed
        bound[3](channel).unbind_from(fanout)
        publisher.transport.bindings.invalidate()
        producer.publish("again", exchange="ex.fanout", routing_key="")
        assert [r.queue for r in acked(db_url, 1)] == ["f2"]


# -- threads, forks, processes ---------------------------------------------------------------


def test_acks_from_other_threads_and_concurrent_consumers(db_url: str) -> None:
    total = 60
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("threads")
        for i in range(total):
            queue.put(i)
        queue.close()
    seen: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with connect(db_url) as own:
                acker_pool: list[threading.Thread] = []

                def on_message(body: int, message: object) -> None:
                    with lock:
                        seen.append(body)
                    # Ack from another thread, as Celery 5.7's pools do.
                    thread = threading.Thread(target=message.ack)  # type: ignore[attr-defined]
                    thread.start()
                    acker_pool.append(thread)

                q = Queue("threads", Exchange("threads"), "threads")
                with Consumer(own, [q], callbacks=[on_message], prefetch_count=5):
                    deadline = time.monotonic() + 20
                    while len(seen) < total and time.monotonic() < deadline:
                        try:
                            own.drain_events(timeout=0.2)
                        except TimeoutError:
                            pass
                for thread in acker_pool:
                    thread.join()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(seen) == list(range(total))
    wait_for(lambda: rows(db_url) == [], timeout=5, what="all acked")


def test_wake_up_delivers_without_waiting_for_the_poll(db_url: str) -> None:
    # A consumer with a long polling interval still gets a message published
    # by another connection promptly (NOTIFY on PostgreSQL, data_version on SQLite).
    with connect(db_url, polling_interval=30, eta_interval=30) as conn, connect(db_url) as publisher:
        queue = Queue("wake", Exchange("wake"), "wake")
        queue(conn.default_channel).declare()
        got: list[float] = []
        with Consumer(conn, [queue], callbacks=[lambda body, message: (got.append(time.monotonic()), message.ack())]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.3)  # listener set up, nothing there

            def publish_later() -> None:
                time.sleep(0.2)
                got.append(time.monotonic())
                publisher.SimpleQueue("wake").put("hi")

            thread = threading.Thread(target=publish_later)
            thread.start()
            conn.drain_events(timeout=10)
            thread.join()
        assert got[1] - got[0] < 2.0


# -- database failures -----------------------------------------------------------------------


def test_lost_database_connections_are_recovered(db_url: str, dialect: str) -> None:
    from sqlalchemy import create_engine, text

    with connect(db_url) as conn:
        for error in (sqlite3.OperationalError, OperationalError, DatabaseUnavailable):
            assert issubclass(error, conn.connection_errors)
        simple = conn.SimpleQueue("reconnect")
        simple.put("before")
        if dialect == "postgresql":
            # As when PostgreSQL restarts: every connection of the pool dies.
            admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as admin_conn:
                killed = admin_conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            admin.dispose()
            assert killed >= 1
        producer = Producer(conn.default_channel)
        # Kombu's retry machinery reconnects on the transport's connection errors.
        publish = conn.ensure(producer, producer.publish, max_retries=3, interval_start=0)
        publish("after", exchange="reconnect", routing_key="reconnect")
        fresh = conn.SimpleQueue("reconnect")
        got = []
        for _ in range(2):
            message = fresh.get(timeout=5)
            got.append(message.payload)
            message.ack()
        assert got == ["before", "after"]
        fresh.close()


def test_queue_ttl_no_ack_and_auto_delete(db_url: str) -> None:
    # Celery's event, pidbox and reply queues: x-message-ttl, no_ack
    # consumers, auto_delete when the consumer goes away.
    with connect(db_url) as consumer_conn, connect(db_url) as publisher:
        exchange = Exchange("events", "topic")
        queue = Queue("events.monitor", exchange, "task.#", auto_delete=True, message_ttl=60)
        got: list[object] = []
        producer = Producer(publisher.default_channel)
        with Consumer(consumer_conn, [queue], callbacks=[lambda body, message: got.append(body)], no_ack=True):
            producer.publish({"e": 1}, exchange="events", routing_key="task.sent")
            (row,) = rows(db_url)
            assert row.expires_at is not None
            assert 59 <= (row.expires_at - row.created_at).total_seconds() <= 61
            consumer_conn.drain_events(timeout=5)
            assert got == [{"e": 1}]
            assert acked(db_url) == []  # no_ack: gone on delivery
        # The consumer was cancelled: the auto_delete queue is unbound.
        publisher.transport.bindings.invalidate()
        producer.publish({"e": 2}, exchange="events", routing_key="task.sent")
        assert rows(db_url) == []


def test_expired_messages_in_abandoned_queues_are_swept(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue("abandoned", Exchange("abandoned"), "abandoned", message_ttl=0.05)
        _publish(conn, queue, {"stale": True})
        # Straight to the queue (default exchange): no binding, no TTL.
        Producer(conn.default_channel).publish({"fresh": True}, exchange="", routing_key="abandoned")
        wait_for(lambda: (conn.transport._keeper.sweep(), len(rows(db_url)) == 1)[1], what="sweep")
        (left,) = rows(db_url)
        assert "fresh" in left.message


# -- batched acks, quiet channels ------------------------------------------------------------


def _count_statements(db_url: str, prefix: str) -> tuple[list[tuple[str, object]], object]:
    """Record the transport's statements starting with ``prefix`` (those
    naming the consumer) that this process runs on the real engine."""
    from sqlalchemy import event

    from jobtable.db import engine as db_engine

    seen: list[tuple[str, object]] = []

    def record(conn: object, cursor: object, statement: str, parameters: object, *args: object) -> None:
        if statement.lstrip().upper().startswith(prefix) and "worker" in statement:
            seen.append((statement, parameters))

    engine = db_engine.get_engine(db_url)
    event.listen(engine, "before_cursor_execute", record)
    return seen, lambda: event.remove(engine, "before_cursor_execute", record)


def test_acks_pile_up_into_one_delete_while_the_writer_is_busy(db_url: str) -> None:
    # The first ack's DELETE is held up by a lock; the acks made meanwhile
    # (from several threads) go out together in the next statement.
    from jobtable.db import engine as db_engine

    with connect(db_url) as conn:
        queue = conn.SimpleQueue("piled")
        for i in range(40):
            queue.put(i)
        got = [queue.get(timeout=5) for _ in range(40)]
        deletes, stop_counting = _count_statements(db_url, "DELETE FROM JOBTABLE_REQUEST")
        blocker = db_engine.get_engine(db_url).connect()
        try:
            if blocker.dialect.name in ("postgresql", "mysql"):
                blocker.exec_driver_sql("SELECT 1 FROM jobtable_request WHERE id = %(id)s FOR UPDATE",
                                        {"id": rows(db_url)[0].id})
            else:
                blocker.exec_driver_sql("DELETE FROM jobtable_request WHERE 0")  # takes the write lock
            got[0].ack()
            if blocker.dialect.name == "postgresql":
                wait_for(lambda: blocker.engine.connect().exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'DELETE FROM jobtable_request%%'").scalar(), timeout=5, what="a blocked DELETE")
            elif blocker.dialect.name == "mysql":
                def delete_waits() -> bool:
                    with blocker.engine.connect() as watcher:
                        return bool(watcher.exec_driver_sql(
                            "SELECT count(*) FROM information_schema.PROCESSLIST "
                            "WHERE INFO LIKE 'DELETE FROM jobtable_request%%'").scalar())
                wait_for(delete_waits, timeout=5, what="a blocked DELETE")
            acking = [threading.Thread(target=m.ack) for m in got[1:]]
            for thread in acking:
                thread.start()
            for thread in acking:
                thread.join()
            # Nothing written while blocked (read through the blocker: on
            # SQLite any other transaction would wait for its lock too).
            assert blocker.exec_driver_sql("SELECT count(*) FROM jobtable_request").scalar() == 40
        finally:
            blocker.rollback()
            blocker.close()
        acked(db_url)
        stop_counting()  # type: ignore[operator]
        assert 1 <= len(deletes) <= 2
        queue.close()


def test_a_quiet_channel_does_not_query_each_cycle_yet_wakes_on_a_publish(pg_url: str) -> None:
    # Celery's control channel sits idle while its task channel is busy:
    # once found empty, a channel is not claimed from again until a NOTIFY
    # names its queue (or the polling interval passes).
    with connect(pg_url, polling_interval=30) as conn, connect(pg_url) as publisher:
        busy = Queue("busy", Exchange("busy"), "busy")
        idle = Queue("idle", Exchange("idle"), "idle")
        producer = Producer(publisher.default_channel)
        for i in range(300):
            producer.publish(i, exchange=busy.exchange, routing_key="busy", declare=[busy])
        idle(publisher.default_channel).declare()
        got: list[object] = []
        claims, stop_counting = _count_statements(pg_url, "UPDATE JOBTABLE_REQUEST R SET STATE = 'RUNNING'")
        try:
            busy_channel, idle_channel = conn.channel(), conn.channel()
            on_message = lambda body, message: (got.append(body), message.ack())  # noqa: E731
            with Consumer(busy_channel, [busy], callbacks=[on_message], prefetch_count=1), \
                    Consumer(idle_channel, [idle], callbacks=[on_message]):
                while len(got) < 300:
                    conn.drain_events(timeout=5)
                idle_claims = [p for _, p in claims if p["q0"] == "idle"]  # type: ignore[index]
                # One claim per busy message (prefetch 1), and a handful for
                # the idle queue instead of one per cycle.
                assert len(idle_claims) <= 5
                assert len(claims) <= 300 + 10
                producer.publish("wake", exchange=idle.exchange, routing_key="idle")
                started = time.monotonic()
                while "wake" not in got:
                    conn.drain_events(timeout=5)
                assert time.monotonic() - started < 5  # not the 30 s polling interval
        finally:
            stop_counting()  # type: ignore[operator]


def test_a_promotion_by_another_process_wakes_a_quiet_consumer(db_url: str) -> None:
    # A countdown message becomes due; whoever promotes it (here: another
    # connection, as a native worker would) wakes the consumer, which has
    # found its queue empty and would otherwise wait out its 30 s poll.
    from jobtable.db import engine as db_engine
    from jobtable.db import claims_sql, clock

    from sqlalchemy import update

    with connect(db_url, polling_interval=30, eta_interval=30) as conn, connect(db_url) as publisher:
        queue = Queue("promoted", Exchange("promoted"), "promoted")
        queue(conn.default_channel).declare()
        # Due in an hour, so no claim can promote it early however slow the
        # machine; the test moves it into the past once the consumer is quiet.
        due = datetime.now(timezone.utc) + timedelta(hours=1)
        Producer(publisher.default_channel).publish(
            {"due": True}, exchange=queue.exchange, routing_key="promoted", headers={"eta": due.isoformat()}
        )
        assert states(db_url) == [tables.SCHEDULED]
        got: list[object] = []
        with Consumer(conn, [queue], callbacks=[lambda body, message: (got.append(body), message.ack())]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.2)  # found empty: quiet until woken
            engine = db_engine.get_engine(db_url)
            with engine.begin() as other:
                past = clock.utcnow() - timedelta(seconds=1)
                other.execute(update(tables.request).values(run_at=past))  # the hour has passed
            with engine.begin() as other:
                assert claims_sql.promote_due(other, clock.utcnow()) == 1
            started = time.monotonic()
            conn.drain_events(timeout=10)
            assert got == [{"due": True}]
            assert time.monotonic() - started < 5


# -- consumers in jobtable_worker ----------------------------------------------------------


def _worker_rows(db_url: str) -> list[Any]:
    from sqlalchemy import select

    from jobtable.db import engine as db_engine

    with db_engine.get_engine(db_url).connect() as conn:
        return list(conn.execute(select(tables.worker).order_by(tables.worker.c.id)))


def test_consumers_keep_a_heartbeat_row_and_stale_ones_are_forgotten(db_url: str) -> None:
    import json

    from sqlalchemy import insert

    from jobtable.db import engine as db_engine
    from jobtable.db import clock

    old = clock.utcnow() - timedelta(days=1)
    with db_engine.get_engine(db_url).begin() as conn:
        conn.execute(insert(tables.worker).values(
            id="kombu:gone:1:x", kind="kombu", hostname="gone", pid=1, queues="[]", processes=0,
            started_at=old, heartbeat_at=old))
    with connect(db_url) as conn:
        publisher_only = conn.SimpleQueue("beat")
        publisher_only.put(1)
        assert [w.id for w in _worker_rows(db_url)] == ["kombu:gone:1:x"]  # publishing registers nothing
        message = publisher_only.get(timeout=5)  # consuming does
        (row,) = [w for w in _worker_rows(db_url) if w.id == conn.transport.consumer_id]
        assert (row.kind, json.loads(row.queues)) == ("kombu", ["beat"])
        first = row.heartbeat_at
        conn.transport._keeper.heartbeat()
        (row,) = [w for w in _worker_rows(db_url) if w.id == conn.transport.consumer_id]
        assert row.heartbeat_at > first
        conn.transport._keeper.recover()  # also forgets consumers silent for an hour
        assert "kombu:gone:1:x" not in [w.id for w in _worker_rows(db_url)]
        message.ack()
        publisher_only.close()
    assert _worker_rows(db_url) == []


def test_celery_gets_an_event_loop_where_there_is_a_descriptor_to_watch(db_url: str, dialect: str) -> None:
    # Celery reads implements.asynchronous to choose its event loop (asynloop)
    # over its blocking one: only PostgreSQL with LISTEN/NOTIFY has an fd.
    def asynchronous(**options: object) -> bool:
        return bool(Connection(broker_url(db_url), transport_options=options).transport.implements.asynchronous)

    assert asynchronous() is (dialect == "postgresql")
    assert asynchronous(wakeups=False) is False
    assert asynchronous(event_loop=False) is False
    assert Transport.implements.asynchronous is False  # the class default is untouched


def test_an_event_loop_consumer_gets_messages_acks_and_countdowns(pg_url: str) -> None:
    # Kombu's own hub drives the transport as Celery's asynloop does.
    from kombu.asynchronous import Hub

    hub = Hub()
    got: list[object] = []
    with connect(pg_url) as conn, connect(pg_url) as publisher:
        queue = Queue("hubbed", Exchange("hubbed"), "hubbed")
        producer = Producer(publisher.default_channel)
        producer.publish("first", exchange=queue.exchange, routing_key="hubbed", declare=[queue])
        with Consumer(conn, [queue], callbacks=[lambda body, message: (got.append(body), message.ack())],
                      prefetch_count=2):
            conn.transport.register_with_event_loop(conn.connection, hub)
            loop = hub.create_loop()

            def spin(until: object) -> None:
                deadline = time.monotonic() + 10
                while not until() and time.monotonic() < deadline:  # type: ignore[operator]
                    next(loop)

            spin(lambda: got == ["first"])
            for i in range(5):  # more than the prefetch window: acks make room
                producer.publish(i, exchange=queue.exchange, routing_key="hubbed")
            producer.publish("later", exchange=queue.exchange, routing_key="hubbed",
                             headers={"eta": (datetime.now(timezone.utc) + timedelta(seconds=0.5)).isoformat()})
            spin(lambda: len(got) == 7)
            conn.transport.unregister_from_event_loop(conn.connection, hub)
    hub.close()
    assert got[:6] == ["first", 0, 1, 2, 3, 4] and got[6] == "later"
    acked(pg_url)


def test_a_new_binding_reaches_consuming_publishers_at_once(pg_url: str) -> None:
    # A Celery worker publishes task events while it consumes; a monitor
    # binding its queue to the event exchange must get the next event, not
    # only once the worker's binding cache (30 s here) expires.  Binding
    # changes are NOTIFYed; a consumer's listener drops the cache.
    with connect(pg_url, binding_cache_seconds=30) as worker, connect(pg_url) as monitor:
        events = Exchange("evts", "topic")
        first = Queue("evts.first", events, "task.#")
        first(monitor.default_channel).declare()
        own = Queue("own", Exchange("own"), "own")
        with Consumer(worker, [own], callbacks=[lambda body, message: message.ack()]):
            with pytest.raises(TimeoutError):
                worker.drain_events(timeout=0.2)  # the worker's loop is listening
            producer = Producer(worker.default_channel)
            producer.publish({"n": 1}, exchange="evts", routing_key="task.sent")  # caches [evts.first]
            Queue("evts.second", events, "task.#")(monitor.default_channel).declare()
            with pytest.raises(TimeoutError):
                worker.drain_events(timeout=0.5)  # its loop reads the notification meanwhile
            producer.publish({"n": 2}, exchange="evts", routing_key="task.sent")
        assert [r.message for r in rows(pg_url, "evts.second")] and len(rows(pg_url, "evts.first")) == 2
