"""Bad request rows written by hand (SQL), as a broken producer would."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import insert, select

from jobtable.db import engine as db_engine
from jobtable.db import tables

#: (task id, stored message): each can never be decoded.
BAD_MESSAGES = [
    ("bad-not-json", "this is {not JSON"),
    ("bad-array", "[1, 2, 3]"),
    ("bad-no-body", '{"headers": {}, "properties": {}}'),
    ("bad-headers", '{"body": "[[], {}, {}]", "headers": "oops", "properties": {}}'),
    ("bad-properties", '{"body": "[[], {}, {}]", "headers": {}, "properties": [1]}'),
    ("bad-json-body", '{"body": "{not json", "content-type": "application/json", "content-encoding": "utf-8", '
     '"headers": {}, "properties": {}}'),
    ("bad-base64", '{"body": "!!!", "content-type": "application/json", "headers": {}, '
     '"properties": {"body_encoding": "base64"}}'),
    ("bad-html", "<script>alert('dead')</script> & not JSON"),
]


def insert_bad(db_url: str, queue: str, task_id: str, message: str, task_name: str = "broken.task") -> None:
    now = datetime.now(timezone.utc)
    with db_engine.get_engine(db_url).begin() as conn:
        conn.execute(
            insert(tables.request).values(
                task_id=task_id, task_name=task_name, queue=queue, priority=0, state=tables.PENDING,
                run_at=now, created_at=now, message=message,
            )
        )


def insert_all_bad(db_url: str, queue: str) -> dict[str, str]:
    for task_id, message in BAD_MESSAGES:
        insert_bad(db_url, queue, task_id, message)
    return dict(BAD_MESSAGES)


def results(db_url: str) -> list[object]:
    with db_engine.get_engine(db_url).connect() as conn:
        return list(conn.execute(select(tables.result).order_by(tables.result.c.id)))


def requests(db_url: str) -> list[object]:
    with db_engine.get_engine(db_url).connect() as conn:
        return list(conn.execute(select(tables.request).order_by(tables.request.c.id)))


def assert_one_dead_letter_each(db_url: str, bad: dict[str, str]) -> None:
    dead = [r for r in results(db_url) if r.status == tables.DEAD_LETTER]
    assert sorted(r.task_id for r in dead) == sorted(bad), [(r.task_id, r.status) for r in results(db_url)]
    for row in dead:
        assert row.message == bad[row.task_id]  # kept as it was
        assert row.error_type == "UndecodableMessage"
        assert row.error_message.startswith("Dead letter: ")
        assert "\x00" not in row.error_message and len(row.error_message) <= 1000
    assert not any(r.task_id in bad for r in requests(db_url))
