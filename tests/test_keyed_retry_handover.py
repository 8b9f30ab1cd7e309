"""The jobtable broker hands a concurrency key from a held attempt to its
retry (``enqueue_sql.hand_over_held_attempts``, issue 15): only the earlier
attempt of the same task and key, held by a Kombu consumer, makes way; any
other row holding the key still refuses the publish, as before."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import select, update

from jobtable import messages
from jobtable.db import clock, enqueue_sql, tables
from jobtable.db import engine as db_engine
from tests.conftest import ALL_DIALECTS

from .transport_helpers import FAST_OPTIONS, broker_url

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

QUEUE = "handover"


def _message(task_id: str, attempt: int, key: str, name: str = "tests.handover.Job") -> dict[str, Any]:
    return messages.task_message(
        task_name=name, task_id=task_id, args=[], kwargs={}, queue=QUEUE, priority=0, eta=None,
        attempt=attempt, retries=3, concurrency_key=key,
    )


def _insert(task_id: str, attempt: int, key: str, *, held_by: str | None, name: str = "tests.handover.Job") -> None:
    row = messages.row_values(_message(task_id, attempt, key, name), QUEUE, clock.utcnow())
    with db_engine.get_engine().begin() as conn:
        assert enqueue_sql.insert_requests(conn, [row])
        if held_by is not None:
            conn.execute(
                update(tables.request).where(tables.request.c.task_id == task_id)
                .values(state=tables.RUNNING, worker_id=held_by)
            )


def _publish(db_url: str, envelope: dict[str, Any]) -> None:
    """Publish through the real transport, as Celery's retry does."""
    with Connection(broker_url(db_url), transport_options=dict(FAST_OPTIONS)) as conn:
        conn.connect()
        channel = conn.default_channel
        channel._insert([QUEUE], envelope)


def _rows() -> list[tuple[str, int, str]]:
    r = tables.request
    with db_engine.get_engine().connect() as conn:
        return [(row.task_id, row.attempt, row.state) for row in conn.execute(select(r).order_by(r.c.id))]


def test_a_keyed_retry_replaces_its_attempt_held_by_a_kombu_consumer(db_url: str) -> None:
    _insert("t1", 1, "k", held_by="kombu:host:1:abc")
    _publish(db_url, _message("t1", 2, "k"))
    assert _rows() == [("t1", 2, tables.PENDING)]


@pytest.mark.parametrize(
    "holder",
    [
        # A native worker never publishes its own retries: its row stays.
        dict(task_id="t1", attempt=1, held_by="native:host:1:0"),
        # Another task holding the key is a real duplicate.
        dict(task_id="other", attempt=1, held_by="kombu:host:1:abc"),
        # A waiting (not held) row of the same task: the key stays with it.
        dict(task_id="t1", attempt=1, held_by=None),
        # A later attempt than the one published (a stale, re-sent retry).
        dict(task_id="t1", attempt=3, held_by="kombu:host:1:abc"),
        # The same task id under another job name.
        dict(task_id="t1", attempt=1, held_by="kombu:host:1:abc", name="tests.handover.Other"),
        # A worker id that only looks like a prefix through LIKE wildcards.
        dict(task_id="t1", attempt=1, held_by="kombu_host:1:abc"),
    ],
)
def test_anything_else_holding_the_key_still_refuses_the_retry(db_url: str, holder: dict[str, Any]) -> None:
    name = holder.get("name", "tests.handover.Job")  # not pop: the dict is shared by every dialect's run
    _insert(holder["task_id"], holder["attempt"], "k", held_by=holder["held_by"], name=name)
    before = _rows()
    _publish(db_url, _message("t1", 2, "k"))
    if name != "tests.handover.Job":
        # Another job name does not share the key: the retry is stored beside it, nothing deleted.
        assert [row[:2] for row in _rows()] == [(holder["task_id"], holder["attempt"]), ("t1", 2)]
        return
    assert _rows() == before  # the publish was skipped as a duplicate, nothing deleted


def test_unkeyed_and_first_attempts_are_not_handed_over(db_url: str) -> None:
    assert not enqueue_sql.is_keyed_retry({"concurrency_key": None, "attempt": 2})
    assert not enqueue_sql.is_keyed_retry({"concurrency_key": "k", "attempt": 1})
    assert enqueue_sql.is_keyed_retry({"concurrency_key": "k", "attempt": 2})
