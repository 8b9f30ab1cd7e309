"""Read-only queries of the queue: requests and results listed and counted,
per-queue figures, one task's request or latest result (the CLI, the
dashboard's actions, ``should_enqueue`` helpers, telemetry, worker stats)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, case, func, not_, or_, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import ColumnElement, Select

from . import tables

request = tables.request
result = tables.result


ACTIVE_STATES = (tables.SCHEDULED, tables.PENDING, tables.RUNNING)
#: Shown, never stored: a ``running`` request that no live worker reports
#: started yet -- fetched in a member's claim batch, waiting its turn.
CLAIMED = "claimed"
SHOWN_STATES = (tables.SCHEDULED, tables.PENDING, CLAIMED, tables.RUNNING)


def started() -> ColumnElement[bool]:
    """The request has really started -- not only been fetched in a batch:

    - a native worker's: its heartbeat row reports it as the job its member
      runs right now (``jobtable_worker.running_id``, written by the
      supervisor's heartbeat -- no write per job);
    - a Kombu consumer's (a row with a lease): ``started_at`` is set, which
      the transport does only once the consumer reports the task started
      (a Celery worker's ``task_prerun``, batched by its lease thread:
      ``transport_sql.transport_mark_started``); delivery leaves it NULL.

    A dead worker's row goes when it is rescued, a dead consumer's messages
    go back to pending (``started_at`` cleared) when its lease is
    recovered, so only live workers count."""
    reported = select(tables.worker.c.running_id).where(tables.worker.c.running_id.is_not(None))
    by_consumer = and_(request.c.lease_expires_at.is_not(None), request.c.started_at.is_not(None))
    return or_(request.c.id.in_(reported), by_consumer)


def _states_condition(states: Iterable[str], split_running: bool) -> ColumnElement[bool]:
    wanted = set(states)
    if not split_running:
        # Stored states: running is claimed or started alike (what
        # should_enqueue, dedupe and cancel must see).
        if CLAIMED in wanted:
            wanted = (wanted - {CLAIMED}) | {tables.RUNNING}
        return request.c.state.in_(sorted(wanted))
    conditions: list[ColumnElement[bool]] = []
    plain = sorted(wanted - {tables.RUNNING, CLAIMED})
    if plain:
        conditions.append(request.c.state.in_(plain))
    if tables.RUNNING in wanted and CLAIMED in wanted:
        conditions.append(request.c.state == tables.RUNNING)
    elif tables.RUNNING in wanted:
        conditions.append(and_(request.c.state == tables.RUNNING, started()))
    elif CLAIMED in wanted:
        conditions.append(and_(request.c.state == tables.RUNNING, not_(started())))
    return or_(*conditions) if conditions else request.c.state.in_([])


def shown_state() -> ColumnElement[Any]:
    """``state`` as shown: ``claimed`` for a running request not started yet."""
    return case(
        (and_(request.c.state == tables.RUNNING, not_(started())), CLAIMED), else_=request.c.state
    ).label("state")


def requests_select(
    *,
    task_name: str | None = None,
    concurrency_key: str | None = None,
    states: Iterable[str] = ACTIVE_STATES,
    queue: str | None = None,
    task_id: str | None = None,
    split_running: bool = False,
) -> Select[Any]:
    """Requests in ``states``.  ``split_running`` (what people read: the
    CLI, the dashboard, ``JobRequest.query``/``JobProcess.query``):
    ``running`` means started, ``claimed`` the rest, and rows show it."""
    if split_running:
        columns = [c for c in request.c if c.name != "state"]
        stmt = select(*columns, shown_state()).where(_states_condition(states, True))
    else:
        stmt = select(request).where(_states_condition(states, False))
    if task_id is not None:
        stmt = stmt.where(request.c.task_id == task_id)
    if task_name is not None:
        stmt = stmt.where(request.c.task_name == task_name)
    if concurrency_key is not None:
        stmt = stmt.where(key_filter(concurrency_key))
    if queue is not None:
        stmt = stmt.where(request.c.queue == queue)
    return stmt


def key_filter(concurrency_key: str) -> ColumnElement[bool]:
    """Rows of ``concurrency_key`` ("": rows without a key).

    The same as ``concurrency_key = :key`` (``unique_key`` is NULL or equal
    to it), spelt so that each branch matches one of the two partial indexes
    (``uq_jobtable_request_unique_key`` for jobs under the default limit,
    ``ix_jobtable_request_custom_key`` for the others): the counts a
    ``should_enqueue`` makes under the enqueue lock stay index lookups."""
    if not concurrency_key:
        return request.c.concurrency_key.is_(None)
    return or_(
        request.c.unique_key == concurrency_key,
        and_(request.c.unique_key.is_(None), request.c.concurrency_key == concurrency_key),
    )


def results_select(
    *,
    task_name: str | None = None,
    concurrency_key: str | None = None,
    statuses: Iterable[str] | None = None,
    queue: str | None = None,
    task_id: str | None = None,
) -> Select[Any]:
    """Results filtered as ``requests_select`` filters requests (the Job
    API's ``JobResult.query``)."""
    stmt = select(result)
    if statuses is not None:
        stmt = stmt.where(result.c.status.in_(list(statuses)))
    if task_name is not None:
        stmt = stmt.where(result.c.task_name == task_name)
    if concurrency_key is not None:
        stmt = stmt.where(
            result.c.concurrency_key == concurrency_key if concurrency_key else result.c.concurrency_key.is_(None)
        )
    if queue is not None:
        stmt = stmt.where(result.c.queue == queue)
    if task_id is not None:
        stmt = stmt.where(result.c.task_id == task_id)
    return stmt


def newest_page(
    conn: Connection, stmt: Select[Any], table: Table, *, before_id: int | None, limit: int
) -> list[Row[Any]]:
    """Rows of ``stmt`` (a select of ``table``) newest first by id, those
    below ``before_id`` only: keyset pages on the primary key, no OFFSET."""
    id_col = table.c.id
    if before_id is not None:
        stmt = stmt.where(id_col < before_id)
    return list(conn.execute(stmt.order_by(id_col.desc()).limit(limit)))


def exists(conn: Connection, stmt: Select[Any]) -> bool:
    return bool(conn.execute(select(stmt.exists())).scalar())


def count(conn: Connection, stmt: Select[Any]) -> int:
    return int(conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())


def count_enqueued_since(conn: Connection, task_name: str, concurrency_key: str, since: datetime) -> int:
    """Jobs of ``task_name`` and ``concurrency_key`` ("": no key) enqueued at
    or after ``since``, whether they wait, run or have finished: first
    attempts, so a job counts once however often it was retried.  A first
    attempt is a request row or (finished) a result row, never both."""
    waiting = select(func.count()).where(
        request.c.task_name == task_name,
        key_filter(concurrency_key),
        request.c.attempt == 1,
        request.c.created_at >= since,
    )
    result_key = (
        result.c.concurrency_key == concurrency_key if concurrency_key else result.c.concurrency_key.is_(None)
    )
    finished = select(func.count()).where(
        result.c.task_name == task_name,
        result_key,
        result.c.attempt == 1,
        result.c.requested_at >= since,
        # Implied (a job ends after it was enqueued): lets the
        # (task_name, ended_at) index bound the scan.
        result.c.ended_at >= since,
    )
    return int(conn.execute(waiting).scalar_one()) + int(conn.execute(finished).scalar_one())


def list_requests(
    conn: Connection,
    *,
    queue: str | None = None,
    task_name: str | None = None,
    states: Iterable[str] = ACTIVE_STATES,
    limit: int = 100,
) -> list[Row[Any]]:
    stmt = requests_select(task_name=task_name, states=states, queue=queue)
    stmt = stmt.order_by(request.c.priority.desc(), request.c.id).limit(limit)
    return list(conn.execute(stmt))


def list_results(
    conn: Connection,
    *,
    queue: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    task_id: str | None = None,
    limit: int = 100,
) -> list[Row[Any]]:
    stmt = select(result)
    if queue is not None:
        stmt = stmt.where(result.c.queue == queue)
    if task_name is not None:
        stmt = stmt.where(result.c.task_name == task_name)
    if status is not None:
        stmt = stmt.where(result.c.status == status)
    if task_id is not None:
        stmt = stmt.where(result.c.task_id == task_id)
    stmt = stmt.order_by(result.c.id.desc()).limit(limit)
    return list(conn.execute(stmt))


@dataclass
class QueueStats:
    queue: str
    scheduled: int = 0
    pending: int = 0
    running: int = 0  # started (see ``started``)
    claimed: int = 0  # running in the table, not started yet


def _by_shown_state(conn: Connection, queues: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
    """(queue, shown state, count): one pass over the small request table."""
    state = shown_state()
    stmt = select(request.c.queue, state, func.count())
    if queues is not None:
        stmt = stmt.where(request.c.queue.in_(list(queues)))
    rows = conn.execute(stmt.group_by(request.c.queue, state))
    return [(queue, shown, int(n)) for queue, shown, n in rows]


def stats(conn: Connection) -> tuple[list[QueueStats], dict[str, dict[str, int]]]:
    """Requests by queue and state, and results by queue and status."""
    by_queue: dict[str, QueueStats] = {}
    for queue, state, n in _by_shown_state(conn):
        entry = by_queue.setdefault(queue, QueueStats(queue))
        setattr(entry, state, getattr(entry, state) + n)
    results: dict[str, dict[str, int]] = {}
    rows = conn.execute(
        select(result.c.queue, result.c.status, func.count()).group_by(result.c.queue, result.c.status)
    )
    for queue, status, n in rows:
        results.setdefault(queue, {})[status] = int(n)
    return sorted(by_queue.values(), key=lambda s: s.queue), results


def shown_request(task_id: str) -> Select[Any]:
    """The request of ``task_id`` as people read it: "claimed" until its
    worker reports it started (``JobRequest.refresh``)."""
    return requests_select(task_id=task_id, states=SHOWN_STATES, split_running=True).limit(1)


def active_request(conn: Connection, task_id: str) -> Row[Any] | None:
    return conn.execute(select(request).where(request.c.task_id == task_id).limit(1)).first()


def latest_result(conn: Connection, task_id: str) -> Row[Any] | None:
    stmt = select(result).where(result.c.task_id == task_id).order_by(result.c.attempt.desc()).limit(1)
    return conn.execute(stmt).first()


def queue_depth(conn: Connection, queues: Sequence[str]) -> dict[str, int]:
    """Requests of ``queues`` by shown state (running: started; claimed)."""
    counts = {tables.SCHEDULED: 0, tables.PENDING: 0, tables.RUNNING: 0, CLAIMED: 0}
    for _queue, state, n in _by_shown_state(conn, queues):
        counts[state] += n
    return counts
