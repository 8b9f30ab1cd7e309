"""Bulk enqueue's fast paths (issue 13, step 2) store exactly what the
one-job path stores: the batch's message template gives the same text as
each job's own envelope, and PostgreSQL's scalar-bound constant columns
give the same rows as one array per column -- on every dialect."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import jobtable
from jobtable import Job, enqueue, job_rows, messages, register_job
from jobtable.jobbase import BaseJob
from jobtable.db import clock, enqueue_sql, tables
from jobtable.db.engine import get_engine
from jobtable.exceptions import EnqueueError, MessageTooLarge
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


@register_job
class BulkArgs(Job):
    def __init__(self, x: Any, y: Any = None, *rest: Any) -> None:
        self.x = x

    def run(self) -> None:
        pass


def awkward_jobs() -> list[BulkArgs]:
    # Quotes, backslashes, NUL, non-ASCII, a line separator, nested values.
    return [BulkArgs(i, y='q"\\\x00é\u2028' * i) for i in range(4)] + [BulkArgs([1, {"a": None}], y=2.5)]


@pytest.mark.parametrize("delayed", [False, True])
def test_template_gives_each_jobs_own_message(db_url: str, delayed: bool) -> None:
    jobs: list[BaseJob] = list(awkward_jobs())
    now = clock.utcnow()
    run_at = now + timedelta(days=1) if delayed else now
    ids = [messages.new_task_id() for _ in jobs]
    headers = {"traceparent": "00-abc-def-01"}
    fast = job_rows.build_rows(jobs, ids, headers, now, run_at, None, None, None, None, 2)
    slow = [job_rows.build_row(j, i, headers, now, run_at, None, None, None, None, 2) for j, i in zip(jobs, ids)]
    assert fast == slow


def test_bulk_rows_as_stored_match_single_enqueues(db_url: str) -> None:
    many = jobtable.run_in_worker_many(awkward_jobs(), queue="bulkq", priority=3)
    singles = [job.run_in_worker(queue="bulkq", priority=3) for job in awkward_jobs()]
    assert all(many) and all(singles)
    with get_engine().connect() as conn:
        rows = {row.task_id: row for row in conn.execute(select(tables.request))}
    for a, b in zip(many, singles):
        ra, rb = rows[a.uuid], rows[b.uuid]  # type: ignore[union-attr]
        assert ra.message.replace(a.uuid, "ID") == rb.message.replace(b.uuid, "ID")  # type: ignore[union-attr]
        assert (ra.queue, ra.priority, ra.state, ra.task_name) == (rb.queue, rb.priority, rb.state, rb.task_name)


def test_a_bad_job_in_a_batch_is_refused_naming_it(db_url: str) -> None:
    jobtable.configure(max_message_size=2000)
    with pytest.raises(MessageTooLarge, match="argument 'x'"):
        jobtable.run_in_worker_many([BulkArgs(1), BulkArgs("x" * 5000)])
    with pytest.raises(EnqueueError, match="surrogate"):
        jobtable.run_in_worker_many([BulkArgs(1), BulkArgs("\ud800")])
    with get_engine().connect() as conn:
        assert conn.execute(select(tables.request)).first() is None


def test_mixed_constant_and_varying_columns(db_url: str) -> None:
    # Keys NULL in some rows, set in others; one pair duplicates a key (the
    # second is skipped); two rows identical but for nothing -- both kept.
    now = clock.utcnow()
    base = {"task_name": "t", "queue": "q", "priority": 0, "state": "pending", "run_at": now, "attempt": 1,
            "retries": 0, "created_at": now, "message": "{}", "expires_at": None}
    rows = [dict(base, task_id=f"id{i}", concurrency_key=key) for i, key in enumerate([None, "k", "k", None, "j"])]
    rows += [dict(base, task_id="same", concurrency_key=None), dict(base, task_id="same", concurrency_key=None)]
    with get_engine().begin() as conn:
        inserted = enqueue_sql.insert_requests(conn, rows)
    assert set(inserted) == {"id0", "id1", "id3", "id4", "same"}
    with get_engine().connect() as conn:
        stored = list(conn.execute(select(tables.request).order_by(tables.request.c.id)))
    assert [(r.task_id, r.concurrency_key, r.unique_key) for r in stored] == [
        ("id0", None, None), ("id1", "k", "k"), ("id3", None, None), ("id4", "j", "j"),
        ("same", None, None), ("same", None, None),
    ]
    assert {r.run_at for r in stored} == {now}


def test_template_without_arguments(db_url: str) -> None:
    jobs: list[BaseJob] = [BulkNoArgs() for _ in range(3)]
    now = clock.utcnow()
    ids = [messages.new_task_id() for _ in jobs]
    fast = job_rows.build_rows(jobs, ids, {}, now, now, "q", 1, 2, "key", 1)
    slow = [job_rows.build_row(j, i, {}, now, now, "q", 1, 2, "key", 1) for j, i in zip(jobs, ids)]
    assert fast == slow


@register_job
class BulkNoArgs(Job):
    def run(self) -> None:
        pass


@register_job
class BulkPerInstance(Job):
    # Queue and priority from each instance: the batch's group key must be
    # asked of every job, not once per class.
    def __init__(self, x: int) -> None:
        self.x = x

    def default_queue(self) -> str:
        return f"q{self.x % 2}"

    def get_priority(self) -> int:
        return self.x % 3

    def run(self) -> None:
        pass


def test_template_with_per_instance_hooks_and_mixed_arguments(db_url: str) -> None:
    jobs: list[BaseJob] = [BulkPerInstance(i) for i in range(6)] + [BulkNoArgs(), BulkArgs(1), BulkNoArgs()] * 2
    now = clock.utcnow()
    ids = job_rows.task_ids_for(len(jobs))
    fast = job_rows.build_rows(jobs, ids, {"traceparent": "00-x-y-01"}, now, now, None, None, None, None, 1)
    slow = [job_rows.build_row(j, i, {"traceparent": "00-x-y-01"}, now, now, None, None, None, None, 1)
            for j, i in zip(jobs, ids)]
    assert fast == slow
    assert [r["queue"] for r in fast[:6]] == ["q0", "q1"] * 3
    assert [r["priority"] for r in fast[:6]] == [0, 1, 2, 0, 1, 2]


@given(st.integers(min_value=1, max_value=300))
@settings(max_examples=50, deadline=None)
def test_batch_task_ids_are_uuid4_texts(n: int) -> None:
    ids = job_rows.task_ids_for(n)
    assert len(ids) == len(set(ids)) == n
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text
