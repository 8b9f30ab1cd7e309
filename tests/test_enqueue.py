"""The Job API's enqueue side, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import jobtable
from jobtable import Job, register_job, run_in_worker_many
from jobtable.db import claims_sql, clock, tables
from jobtable.db.engine import get_engine
from jobtable.exceptions import EnqueueError, UnknownJob
from jobtable.messages import decode_task
from jobtable.registry import jobs_registry
from tests.conftest import ALL_DIALECTS
from tests.sample_jobs import AtMostTwo, Echo, Keyed, LegacyWorkerJob, Renamed

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def rows() -> list[Any]:
    with get_engine().connect() as conn:
        return list(conn.execute(select(tables.request).order_by(tables.request.c.id)))


def count_rows() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.request)).scalar_one())


def test_defaults(db_url: str) -> None:
    request = Echo("hi").run_in_worker()
    assert request is not None
    (row,) = rows()
    assert (row.task_id, row.task_name, row.queue, row.priority, row.state) == (
        request.uuid,
        "tests.sample_jobs.Echo",
        "default",
        0,
        "pending",
    )
    assert (row.attempt, row.retries, row.concurrency_key) == (1, 0, None)
    assert request.id == row.id and request.job_class == "tests.sample_jobs.Echo"


def test_options_are_stored(db_url: str) -> None:
    before = datetime.now(timezone.utc)
    request = Echo().run_in_worker(queue="slow", delay=60, priority=10, retries=3, concurrency_key="user-1")
    assert request is not None
    (row,) = rows()
    assert (row.queue, row.priority, row.retries, row.concurrency_key, row.state) == (
        "slow",
        10,
        3,
        "user-1",
        "scheduled",
    )
    assert before + timedelta(seconds=59) < row.run_at < datetime.now(timezone.utc) + timedelta(seconds=61)


@pytest.mark.parametrize(
    "delay",
    [timedelta(minutes=5), 300, 300.0, "datetime"],
    ids=["timedelta", "int", "float", "datetime"],
)
def test_delay_forms(db_url: str, delay: Any) -> None:
    now = datetime.now(timezone.utc)
    if delay == "datetime":
        delay = now + timedelta(minutes=5)
    request = Echo().run_in_worker(delay=delay)
    assert request is not None and request.state == "scheduled"
    assert abs((request.start_at - (now + timedelta(minutes=5))).total_seconds()) < 2


def test_past_datetime_runs_now(db_url: str) -> None:
    request = Echo().run_in_worker(delay=datetime.now(timezone.utc) - timedelta(days=1))
    assert request is not None and request.state == "pending"


def test_message_is_celery_protocol_v2(db_url: str) -> None:
    eta = datetime.now(timezone.utc) + timedelta(hours=1)
    request = Echo(1, "a", key=(1, 2)).run_in_worker(delay=eta, priority=3, retries=2, concurrency_key="k")
    assert request is not None
    (row,) = rows()
    envelope = json.loads(row.message)
    headers = envelope["headers"]
    assert headers["task"] == "tests.sample_jobs.Echo"
    assert headers["id"] == request.uuid == envelope["properties"]["correlation_id"]
    assert datetime.fromisoformat(headers["eta"]) == request.start_at
    assert headers["retries"] == 0 and headers["expires"] is None
    assert headers["root_id"] == request.uuid and headers["parent_id"] is None
    assert headers["concurrency_key"] == "k" and headers["jobtable_retries"] == 2
    assert envelope["content-type"] == "application/json"
    assert envelope["properties"]["priority"] == 3
    assert envelope["properties"]["delivery_info"]["routing_key"] == "default"
    args, kwargs, embed = json.loads(envelope["body"])
    assert args == [1, "a"] and kwargs == {"key": {"__type__": "tuple", "__value__": [1, 2]}}
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    # Celery's own protocol parser accepts it.
    from celery.app.amqp import AMQP  # noqa: F401
    from kombu.message import Message

    call = decode_task(row.message)
    assert (call.task_name, call.task_id, call.args) == ("tests.sample_jobs.Echo", request.uuid, [1, "a"])
    assert Message(body=envelope["body"], headers=headers, content_type="application/json").decode()[0] == [1, "a"]


def test_concurrency_key_deduplicates(db_url: str) -> None:
    first = Keyed("user-1").run_in_worker()
    assert first is not None and first.concurrency_key == "user-1"
    assert Keyed("user-1").run_in_worker() is None
    assert Keyed("user-2").run_in_worker() is not None
    # A key belongs to a job class: another class may use the same key.
    assert Echo().run_in_worker(concurrency_key="user-1") is not None
    # Running jobs hold their key too.
    with get_engine().begin() as conn:
        claims_sql.claim(conn, ["default"], 10, worker_id="w1", now=clock.utcnow())
    assert Keyed("user-1").run_in_worker() is None
    assert count_rows() == 3


def test_empty_key_does_not_deduplicate(db_url: str) -> None:
    assert Echo().run_in_worker(concurrency_key="") is not None
    assert Echo().run_in_worker(concurrency_key="") is not None
    assert count_rows() == 2


def test_should_enqueue_and_helpers(db_url: str) -> None:
    assert AtMostTwo("a").run_in_worker() is not None
    assert AtMostTwo("a").run_in_worker() is not None
    assert AtMostTwo("a").run_in_worker() is None
    job = AtMostTwo("a")
    assert job.get_requested_jobs().count() == 2
    assert job.get_requested_jobs("").exists()
    assert job.get_processing_jobs().count() == 0
    with get_engine().begin() as conn:
        claims_sql.claim(conn, ["default"], 1, worker_id="w1", now=clock.utcnow())
    assert job.get_processing_jobs().count() == 1
    assert [r.state for r in job.get_requested_jobs()] == ["pending"]


def test_legacy_plain_worker_names(db_url: str) -> None:
    job = LegacyWorkerJob()
    assert (job.default_queue(), job.resolved_queue()) == ("default", "legacy")
    request = job.run_in_worker()
    assert request is not None
    assert (request.queue, request.priority, request.retries, request.concurrency_key) == (
        "legacy",
        7,
        2,
        "legacy-key",
    )
    assert job.resolved_retry_delay(2) == 20
    assert LegacyWorkerJob().run_in_worker() is None
    assert Echo().run_in_worker(unique_key="u") is not None
    assert Echo().run_in_worker(unique_key="u") is None


def test_new_names_are_visible_through_old_ones(db_url: str) -> None:
    class NewStyle(Job):
        def default_queue(self) -> str:
            return "q"

        def calculate_retry_delay(self, attempt: int) -> int:
            return 2 ** (attempt - 1)

    job = NewStyle()
    assert job.get_queue() == "q"
    assert [job.get_retry_delay(a) for a in (1, 2, 3)] == [1, 2, 4]


def test_alias_registers_an_old_name(db_url: str) -> None:
    assert jobs_registry.get("old.name.Renamed") is Renamed
    assert Renamed.job_name() == "tests.sample_jobs.Renamed"


def test_bulk_enqueue(db_url: str) -> None:
    jobs = [Echo(i) for i in range(2500)] + [Keyed("same"), Keyed("same"), Keyed("other")]
    requests = run_in_worker_many(jobs, priority=4)
    assert len(requests) == len(jobs)
    assert all(r is not None for r in requests[:2500])
    assert [r is not None for r in requests[2500:]] == [True, False, True]
    assert count_rows() == 2502
    assert {r.priority for r in rows()} == {4}
    assert run_in_worker_many([Keyed("same")]) == [None]


def test_bulk_enqueue_runs_should_enqueue(db_url: str) -> None:
    # Each check sees the jobs the batch accepted before it.
    requests = run_in_worker_many([AtMostTwo("x") for _ in range(5)] + [Echo()])
    assert [r is not None for r in requests] == [True, True, False, False, False, True]
    assert run_in_worker_many([AtMostTwo("x")]) == [None]


def test_unregistered_job_is_refused(db_url: str) -> None:
    class NotRegistered(Job):
        def run(self) -> None:
            pass

    with pytest.raises(UnknownJob, match="NotRegistered is not a registered job.*@register_job"):
        NotRegistered().run_in_worker()
    assert count_rows() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": -1}, "delay=-1 is negative"),
        ({"delay": "soon"}, "delay='soon' is not a delay"),
        ({"delay": datetime(2030, 1, 1)}, "naive datetime"),
        ({"priority": 40000}, "priority=40000 is out of range.*-32768 and 32767"),
        ({"priority": "high"}, "priority='high' must be an integer"),
        ({"retries": -1}, "retries=-1 is out of range"),
        ({"queue": ""}, "queue='' must be a non-empty string"),
        ({"concurrency_key": "k" * 300}, "concurrency_key is 300 characters long"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(db_url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(EnqueueError, match=message):
        Echo().run_in_worker(**options)
    with pytest.raises(EnqueueError, match=message):
        run_in_worker_many([Echo(), Echo()], **options)
    assert count_rows() == 0


def test_unserializable_argument_writes_nothing(db_url: str) -> None:
    with pytest.raises(TypeError, match="Echo argument 'when' is of type"):
        run_in_worker_many([Echo(), Echo(when=object())])
    assert count_rows() == 0


# -- transactional enqueue -------------------------------------------------------


def test_enqueue_in_callers_connection_commits_with_it(db_url: str) -> None:
    engine = get_engine()
    with engine.connect() as conn:
        with conn.begin():
            request = Echo().run_in_worker(connection=conn)
            assert request is not None
        assert count_rows() == 1
        with pytest.raises(RuntimeError), conn.begin():
            Echo().run_in_worker(connection=conn)
            raise RuntimeError("the application's transaction fails")
    assert count_rows() == 1


def test_enqueue_in_callers_session(db_url: str) -> None:
    with Session(get_engine()) as session:
        Echo("kept").run_in_worker(connection=session)
        session.commit()
        Echo("dropped").run_in_worker(connection=session)
        session.rollback()
    (row,) = rows()
    assert decode_task(row.message).args == ["kept"]


def test_should_enqueue_inside_callers_transaction(db_url: str) -> None:
    with get_engine().begin() as conn:
        assert AtMostTwo("t").run_in_worker(connection=conn) is not None
        assert AtMostTwo("t").run_in_worker(connection=conn) is not None
        # The helpers see the caller's uncommitted rows.
        assert AtMostTwo("t").run_in_worker(connection=conn) is None
    assert count_rows() == 2


def test_connection_must_be_sqlalchemy(db_url: str) -> None:
    with pytest.raises(EnqueueError, match="connection= takes a SQLAlchemy Connection or Session"):
        Echo().run_in_worker(connection="nope")


def test_module_level_api() -> None:
    assert jobtable.Job is Job and jobtable.register_job is register_job
