"""The single enqueue's lean path (issue 13): ``Job(...).run_in_worker()``
builds its row from a per-class template (``job_rows.single_row``) and, on
PostgreSQL, writes it with one prepared autocommit statement on a pooled
driver connection (``db/single_insert.py``).  What it stores is what the
general path stores; everything the general path keeps (routing,
concurrency keys, ``should_enqueue``, wake-ups, the retry after a dropped
connection, errors naming the argument) still holds."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event, select, text

import jobtable
from jobtable import EnqueueError, Job, register_job
from jobtable import enqueue as enqueue_module
from jobtable import job_rows
from jobtable.db import engine as db_engine
from jobtable.db import single_insert, tables
from jobtable.db.notify import Listener
from jobtable.exceptions import MessageTooLarge

from tests.conftest import ALL_DIALECTS
from tests.pg_backends import terminate_clients

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)
PG_ONLY = pytest.mark.parametrize("dialect", ["postgresql"])


@register_job
class Single(Job):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self) -> None:
        pass


@register_job
class SingleQueued(Job):
    """Its own queue, priority and retries, from the instance."""

    def __init__(self, n: int) -> None:
        self.n = n

    def default_queue(self) -> str:
        return f"q{self.n % 2}"

    def default_priority(self) -> int:
        return self.n % 3

    def default_retries(self) -> int:
        return 2

    def run(self) -> None:
        pass


@register_job
class SingleKeyed(Job):
    def __init__(self, key: str) -> None:
        self.key = key

    def default_concurrency_key(self) -> str:
        return self.key

    def run(self) -> None:
        pass


@register_job
class SingleRefused(Job):
    def should_enqueue(self, concurrency_key: str) -> bool:
        return False

    def run(self) -> None:
        pass


class HostileRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


def _rows() -> dict[str, Any]:
    with db_engine.get_engine().connect() as conn:
        return {row.task_id: row for row in conn.execute(select(tables.request).order_by(tables.request.c.id))}


_COMPARED = [c.name for c in tables.request.columns if c.name not in ("id", "task_id", "created_at", "run_at", "message")]

#: (job, options): each pair is enqueued twice, by the lean path and the general one.
CASES: list[tuple[Any, dict[str, Any]]] = [
    (lambda: Single(), {}),
    (lambda: Single(), {"queue": "other", "priority": 5, "retries": 7}),
    (lambda: Single(1, "two", [3.5, None], {"k": True}), {}),
    (lambda: Single(text="NUL \x00 quote \" backslash \\ é \u2028 \U0001f600", n=-(2**40)), {}),
    (lambda: Single(*range(50), nested={"a": [{"b": ["c"] * 3}]}), {"queue": "other"}),
    (lambda: SingleQueued(1), {}),
    (lambda: SingleQueued(2), {}),
    (lambda: SingleQueued(4), {"retries": 0}),
]


def test_the_lean_path_stores_what_the_general_path_stores(db_url: str) -> None:
    job_rows._SINGLE.clear()
    for make, options in CASES + CASES:  # twice: the first builds the template, the second fills it
        lean = make().run_in_worker(**options)
        # delay=0 takes the general path (_row and every check) for the same row.
        general = make().run_in_worker(delay=0, **options)
        assert lean is not None and general is not None
        rows = _rows()
        a, b = rows[lean.uuid], rows[general.uuid]
        for column in _COMPARED:
            assert getattr(a, column) == getattr(b, column), column
        assert a.message.replace(lean.uuid, "ID") == b.message.replace(general.uuid, "ID")
        assert a.run_at == a.created_at and b.run_at == b.created_at
        assert lean.start_at == a.run_at and lean.queue == a.queue and lean.id == a.id
        assert (lean.priority, lean.retries, lean.attempt, lean.concurrency_key) == (
            general.priority, general.retries, general.attempt, general.concurrency_key
        )
    assert (Single, "default", 0, 0) in job_rows._SINGLE or any(
        key[0] is Single for key in job_rows._SINGLE
    ), "the lean path was not taken"
    # What a worker decodes: the arguments as given (NUL included).
    job = Single(text="a\x00b", n=[1, {"x": None}])
    request = job.run_in_worker()
    assert request is not None
    call = jobtable.messages.decode_task(_rows()[request.uuid].message)
    assert call.kwargs == {"text": "a\x00b", "n": [1, {"x": None}]} and call.args == []


@pytest.mark.parametrize("warm", [False, True], ids=["first", "templated"])
def test_hostile_arguments_are_refused_naming_the_argument(db_url: str, warm: bool) -> None:
    job_rows._SINGLE.clear()
    if warm:
        assert Single("warm").run_in_worker() is not None
    with pytest.raises(EnqueueError, match=r"argument 'value'.*surrogate|surrogate.*argument 'value'|'value'"):
        Single(value="lone \ud800 surrogate").run_in_worker()
    with pytest.raises(EnqueueError, match="argument 'thing'"):
        Single(thing=HostileRepr()).run_in_worker()
    with pytest.raises(EnqueueError, match="argument 0"):
        Single(HostileRepr()).run_in_worker()
    with pytest.raises(MessageTooLarge, match="max_message_size") as raised:
        Single(huge="x" * (jobtable.settings.get_settings().max_message_size + 1)).run_in_worker()
    assert "huge" in str(raised.value)
    with pytest.raises(EnqueueError, match="priority"):
        Single().run_in_worker(priority=-(2**40))
    with pytest.raises(EnqueueError, match="queue"):
        Single().run_in_worker(queue="")
    with pytest.raises(EnqueueError, match="queue"):
        Single().run_in_worker(queue="nul\x00queue")
    assert _rows().keys() == ({next(iter(_rows()))} if warm else set())


def test_a_smaller_max_message_size_applies_to_templated_jobs(db_url: str) -> None:
    assert Single("a" * 2000).run_in_worker() is not None  # the template, under the default limit
    jobtable.configure(database_url=db_url, max_message_size=1500)
    try:
        with pytest.raises(MessageTooLarge):
            Single("a" * 2000).run_in_worker()
        assert Single().run_in_worker() is not None
    finally:
        jobtable.configure(database_url=db_url)


def test_concurrency_keys_and_should_enqueue_still_hold(db_url: str) -> None:
    assert SingleKeyed("k").run_in_worker() is not None
    assert SingleKeyed("k").run_in_worker() is None
    assert Single().run_in_worker(concurrency_key="given") is not None
    assert Single().run_in_worker(concurrency_key="given") is None
    assert SingleRefused().run_in_worker() is None
    assert enqueue_module._enqueue_one(SingleKeyed("x"), None, None, None, None) is enqueue_module._GENERAL
    assert enqueue_module._enqueue_one(SingleRefused(), None, None, None, None) is enqueue_module._GENERAL
    assert len(_rows()) == 2


def test_a_routed_queue_keeps_the_general_path(db_url: str) -> None:
    """broker_routes' queues are published to their broker by the general
    path (test_routing.py has the publish itself)."""
    jobtable.configure(database_url=db_url, broker_routes={"routed": "amqp://guest:guest@127.0.0.1:5672//"})
    try:
        assert enqueue_module._enqueue_one(Single(), "routed", None, None, None) is enqueue_module._GENERAL
        assert Single().run_in_worker(queue="not-routed") is not None
    finally:
        jobtable.configure(database_url=db_url)
    assert [row.queue for row in _rows().values()] == ["not-routed"]


def test_inside_the_callers_transaction_it_is_one_statement(db_url: str) -> None:
    engine = db_engine.get_engine()
    with engine.connect() as conn:
        with conn.begin():
            assert Single("kept").run_in_worker(connection=conn) is not None
        with conn.begin() as tx:
            assert Single("dropped").run_in_worker(connection=conn) is not None
            tx.rollback()
    assert len(_rows()) == 1


@contextmanager
def _traced(engine: Any) -> Iterator[list[str]]:
    """libpq's protocol trace of every pooled connection checked out while
    the block runs (from its checkout: the trace starts there)."""
    lines: list[str] = []
    trace = tempfile.TemporaryFile(mode="w+")
    traced: list[Any] = []

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection not in traced:
            dbapi_connection.pgconn.trace(trace.fileno())
            dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            traced.append(dbapi_connection)

    event.listen(engine.pool, "checkout", on_checkout)
    try:
        yield lines
    finally:
        event.remove(engine.pool, "checkout", on_checkout)
        for dbapi_connection in traced:
            dbapi_connection.pgconn.untrace()
        trace.seek(0)
        lines.extend(trace.read().splitlines())
        trace.close()


def _messages(lines: list[str], side: str) -> list[str]:
    return [line.split("\t")[2] for line in lines if line.startswith(side)]


@PG_ONLY
def test_a_single_enqueue_is_one_round_trip_on_postgresql(db_url: str) -> None:
    engine = db_engine.get_engine()
    assert Single("warm").run_in_worker() is not None  # schema checked, statement prepared
    assert single_insert.usable(engine)
    with _traced(engine) as lines:
        assert Single("a").run_in_worker() is not None
        assert Single(b=2).run_in_worker() is not None
    # No BEGIN, no COMMIT, no ROLLBACK at check-in, no Parse (prepared once):
    # Bind, Describe, Execute, Sync, each enqueue one exchange.
    assert _messages(lines, "F") == ["Bind", "Describe", "Execute", "Sync"] * 2
    assert _messages(lines, "B").count("ReadyForQuery") == 2
    assert not any("BEGIN" in line or "COMMIT" in line or "ROLLBACK" in line for line in lines)
    # The caller's transaction: the enqueue is one statement in it.
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1"))
        from tests.test_enqueue_copy import protocol_trace

        with protocol_trace(conn) as inner:
            assert Single("c").run_in_worker(connection=conn) is not None
    assert _messages(inner, "B").count("ReadyForQuery") == 1


@PG_ONLY
def test_the_insert_wakes_a_listener(db_url: str) -> None:
    listener = Listener.create(db_engine.get_engine(), ["wake"])
    try:
        listener.consume()
        assert listener.wait(0) is False
        assert Single().run_in_worker(queue="wake") is not None
        # Its notification, read from the LISTEN connection (not a poll):
        # already there when the enqueue returned, as it is sent at commit.
        assert listener.wait(10.0) is True
        assert listener._seen.get("wake", 0) >= 1  # type: ignore[attr-defined]
    finally:
        listener.close()


@PG_ONLY
def test_the_prepared_statement_survives_a_reconnect(db_url: str) -> None:
    for _ in range(3):
        assert Single("before").run_in_worker() is not None
    assert terminate_clients(db_url) >= 1
    # The pooled connection is dead: the enqueue's one retry takes a new one
    # (which prepares the statement again) and writes the row once.
    after = Single("after").run_in_worker()
    assert after is not None
    assert Single("again").run_in_worker() is not None
    rows = _rows()
    assert len(rows) == 5 and after.uuid in rows


@PG_ONLY
def test_statement_listeners_still_see_the_insert(db_url: str) -> None:
    engine = db_engine.get_engine()
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        assert not single_insert.usable(engine)
        assert Single().run_in_worker() is not None
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert any("INSERT INTO jobtable_request" in s for s in seen)
    assert single_insert.usable(engine)


@PG_ONLY
def test_behind_a_transaction_pooler_nothing_is_prepared(db_url: str) -> None:
    jobtable.configure(database_url=db_url, database_pooler="transaction")
    try:
        engine = db_engine.get_engine()
        for _ in range(3):
            assert Single().run_in_worker() is not None
        with _traced(engine) as lines:
            assert Single().run_in_worker() is not None
        # An unnamed statement, parsed each time: no prepared statement that
        # the pooler's next transaction could send to another server.
        assert 'Parse\t' in "\n".join(lines) or any(m == "Parse" for m in _messages(lines, "F"))
        assert not any('"_pg3_' in line for line in lines)
    finally:
        jobtable.configure(database_url=db_url)
