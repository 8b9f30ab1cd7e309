"""The dashboard's SQL.  Every query here is bounded so that a page stays fast
with a million results and a hundred thousand waiting jobs:

- lists use keyset pagination (a cursor of the last row's sort key, no OFFSET)
  on the order of an existing index;
- the overview never counts result rows: it reads ``jobtable_result_stats``,
  which triggers keep as the aggregate of ``jobtable_result`` (per bucket,
  queue and status), in one index range per window.

The request table is the small hot table (only waiting and running jobs), so
its per-queue counts are exact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, text, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import ColumnElement, Select

from .. import records
from ..db import clock, dialects, reads_sql, tables
from ..exceptions import JobNotFound, JobStateError

request = tables.request
result = tables.result
worker = tables.worker
schedule = tables.schedule
stats = tables.result_stats

#: Rows per list page.
PAGE_SIZE = 50


def utcnow() -> datetime:
    return clock.utcnow()  # the database's clock (db/clock.py)


# -- cursors -----------------------------------------------------------------------
# A cursor is "<iso time or int>|<id>": the sort key of the last row shown.


def encode_cursor(key: Any, row_id: int) -> str:
    if isinstance(key, datetime):
        key = key.astimezone(timezone.utc).isoformat()
    return f"{key}|{row_id}"


def decode_time_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if not cursor:
        return None
    try:
        raw, row_id = cursor.rsplit("|", 1)
        when = datetime.fromisoformat(raw)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when, int(row_id)
    except ValueError:
        return None  # A mangled cursor shows the first page.


def decode_int_cursor(cursor: str | None) -> tuple[int, int] | None:
    if not cursor:
        return None
    try:
        raw, row_id = cursor.rsplit("|", 1)
        return int(raw), int(row_id)
    except ValueError:
        return None


@dataclass
class Page:
    rows: list[Row[Any]]
    next_cursor: str | None


def _after_desc(col: Any, id_col: Any, key: Any, row_id: int) -> ColumnElement[bool]:
    # (col, id) < (key, row_id), written so that the index on col bounds the scan.
    return and_(col <= key, or_(col < key, id_col < row_id))


def _after_asc(col: Any, id_col: Any, key: Any, row_id: int) -> ColumnElement[bool]:
    return and_(col >= key, or_(col > key, id_col > row_id))


def _page(conn: Connection, stmt: Select[Any], limit: int, cursor_of: Any) -> Page:
    rows = list(conn.execute(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, cursor_of(rows[-1]) if more and rows else None)


# -- requests ---------------------------------------------------------------------

#: Columns of list pages (the message stays on the detail page).
REQUEST_COLUMNS = [c for c in request.c if c.name != "message"]
RESULT_COLUMNS = [c for c in result.c if c.name not in ("message", "traceback", "return_value", "meta")]


def pending_queues(conn: Connection) -> list[str]:
    """Queues that have pending jobs: a skip scan of the claim index (one
    index probe per queue, however many jobs wait)."""
    first = select(func.min(request.c.queue).label("queue")).where(request.c.state == tables.PENDING)
    walk = first.cte("pending_queues", recursive=True)
    following = (
        select(func.min(request.c.queue))
        .where(request.c.state == tables.PENDING, request.c.queue > walk.c.queue)
        .scalar_subquery()
    )
    walk = walk.union_all(select(following).where(walk.c.queue.is_not(None)))
    return [q for q in conn.execute(select(walk.c.queue)).scalars() if q is not None]


def pending_page(
    conn: Connection, *, queue: str | None, task_name: str | None, cursor: str | None, limit: int = PAGE_SIZE
) -> Page:
    """Pending jobs in claim order (priority, then age).

    The claim index is per queue, so without a queue filter each queue's
    first rows are read through it and merged here, as the claim does,
    rather than sorting every pending job.
    """
    after = decode_int_cursor(cursor)
    queues = [queue] if queue else pending_queues(conn)
    rows: list[Row[Any]] = []
    for name in queues:
        stmt = select(*REQUEST_COLUMNS).where(request.c.state == tables.PENDING, request.c.queue == name)
        if task_name:
            stmt = stmt.where(request.c.task_name == task_name)
        if after is not None:
            # Sorted by priority DESC, id ASC: rows after (p, i) have a lower
            # priority, or the same priority and a larger id.
            p, i = after
            stmt = stmt.where(and_(request.c.priority <= p, or_(request.c.priority < p, request.c.id > i)))
        stmt = stmt.order_by(request.c.priority.desc(), request.c.id).limit(limit + 1)
        rows.extend(conn.execute(stmt))
    rows.sort(key=lambda r: (-r.priority, r.id))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].priority, rows[-1].id) if more and rows else None)


def scheduled_page(
    conn: Connection, *, queue: str | None, task_name: str | None, cursor: str | None, limit: int = PAGE_SIZE
) -> Page:
    """Scheduled (future) jobs, soonest first: the due index."""
    stmt = select(*REQUEST_COLUMNS).where(request.c.state == tables.SCHEDULED)
    if queue:
        stmt = stmt.where(request.c.queue == queue)
    if task_name:
        stmt = stmt.where(request.c.task_name == task_name)
    after = decode_time_cursor(cursor)
    if after is not None:
        stmt = stmt.where(_after_asc(request.c.run_at, request.c.id, *after))
    stmt = stmt.order_by(request.c.run_at, request.c.id)
    return _page(conn, stmt, limit, lambda r: encode_cursor(r.run_at, r.id))


def running(conn: Connection, *, queue: str | None = None, limit: int = 500) -> list[Row[Any]]:
    """Running jobs, longest running first.  There are at most as many as
    worker processes, so a bound of a few hundred is a display bound."""
    # Started only (the heartbeat's report, reads_sql.started): a member's
    # claimed-but-waiting jobs are counted as "claimed" on the overview.
    stmt = select(*REQUEST_COLUMNS).where(request.c.state == tables.RUNNING, reads_sql.started())
    if queue:
        stmt = stmt.where(request.c.queue == queue)
    return list(conn.execute(stmt.order_by(request.c.started_at, request.c.id).limit(limit)))


def request_by_id(conn: Connection, request_id: int) -> Row[Any] | None:
    return conn.execute(select(request).where(request.c.id == request_id)).first()


def requests_of_task(conn: Connection, task_id: str) -> list[Row[Any]]:
    return list(conn.execute(select(request).where(request.c.task_id == task_id).order_by(request.c.attempt)))


# -- results ----------------------------------------------------------------------


@dataclass
class ResultFilter:
    status: str | None = None
    queue: str | None = None
    task_name: str | None = None
    #: A task uuid (exact match, all its attempts).
    uuid: str | None = None
    #: Only attempts that were followed by a retry.
    retried: bool = False

    def active(self) -> bool:
        return bool(self.status or self.queue or self.task_name or self.uuid or self.retried)


def results_page(conn: Connection, flt: ResultFilter, cursor: str | None, limit: int = PAGE_SIZE) -> Page:
    """Results, newest first, by (ended_at, id): each filter has an index
    that starts with its column and continues with ended_at."""
    stmt = select(*RESULT_COLUMNS)
    if flt.uuid:
        stmt = stmt.where(result.c.task_id == flt.uuid)
    if flt.status:
        stmt = stmt.where(result.c.status == flt.status)
    if flt.queue:
        stmt = stmt.where(result.c.queue == flt.queue)
    if flt.task_name:
        stmt = stmt.where(result.c.task_name == flt.task_name)
    if flt.retried:
        # The bare column: the partial index ix_jobtable_result_retried.
        stmt = stmt.where(text("jobtable_result.retried"))
    after = decode_time_cursor(cursor)
    if after is not None:
        stmt = stmt.where(_after_desc(result.c.ended_at, result.c.id, *after))
    stmt = stmt.order_by(result.c.ended_at.desc(), result.c.id.desc())
    return _page(conn, stmt, limit, lambda r: encode_cursor(r.ended_at, r.id))


def result_by_id(conn: Connection, result_id: int) -> Row[Any] | None:
    return conn.execute(select(result).where(result.c.id == result_id)).first()


def attempts_of_task(conn: Connection, task_id: str, limit: int = 200) -> list[Row[Any]]:
    """Every recorded attempt of a task (the retry chain), by the unique
    (task_id, attempt) index."""
    stmt = select(*RESULT_COLUMNS).where(result.c.task_id == task_id).order_by(result.c.attempt).limit(limit)
    return list(conn.execute(stmt))


def progress_of(conn: Connection, task_id: str, attempt: int) -> dict[str, Any] | None:
    """The custom state a running attempt reported (Celery's
    ``update_state(state="PROGRESS", meta=...)``, from a Celery worker or the
    shim): ``{"state", "meta"}`` of its unfinished (STARTED) result row, or None."""
    stmt = select(result.c.meta).where(
        result.c.task_id == task_id, result.c.attempt == attempt, result.c.status == "STARTED"
    )
    text = conn.execute(stmt).scalar()
    if not text:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("status"), str):
        return None
    return {"state": meta["status"], "meta": meta.get("result")}


# -- overview ---------------------------------------------------------------------


@dataclass
class QueueRow:
    queue: str
    pending: int = 0
    scheduled: int = 0
    running: int = 0  # started
    claimed: int = 0  # fetched by a worker, not started yet
    #: When the oldest pending job became due.
    oldest_due: datetime | None = None


def queue_depths(conn: Connection) -> list[QueueRow]:
    """Waiting and running jobs per queue, and each queue's oldest due job.

    One pass over the request table, which holds only live jobs.
    """
    oldest = func.min(case((request.c.state == tables.PENDING, request.c.run_at), else_=None))
    state = reads_sql.shown_state()
    stmt = select(request.c.queue, state, func.count(), oldest).group_by(request.c.queue, state)
    by_queue: dict[str, QueueRow] = {}
    for queue, shown, n, due in conn.execute(stmt):
        entry = by_queue.setdefault(queue, QueueRow(queue))
        if shown in (tables.PENDING, tables.SCHEDULED, tables.RUNNING, reads_sql.CLAIMED):
            setattr(entry, shown, int(n))
        if due is not None:
            # min() over a CASE loses the column type on SQLite: parse it back.
            entry.oldest_due = _as_utc(due)
    return sorted(by_queue.values(), key=lambda q: q.queue)


def _as_utc(value: Any) -> datetime:
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass
class Bucket:
    start: datetime
    end: datetime
    #: Results per status that ended in the bucket.
    counts: dict[str, int] = field(default_factory=dict)
    #: Attempts that ended in the bucket and were followed by a retry.
    retried: int = 0
    #: Estimated median queue wait (seconds) of the bucket's successful
    #: results (see ``median_wait``).
    wait: float | None = None

    @property
    def successful(self) -> int:
        return self.counts.get(tables.SUCCESSFUL, 0)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in (tables.ERRORED, tables.LOST, tables.QUARANTINED))


def window_totals(buckets: Sequence[Bucket]) -> tuple[dict[str, int], int]:
    """Results per status, and retried attempts, over all ``buckets``: the
    overview's cards sum the chart's buckets (one read for both)."""
    counts = {status: sum(b.counts.get(status, 0) for b in buckets) for status in tables.RESULT_STATUSES}
    return counts, sum(b.retried for b in buckets)


def buckets(conn: Connection, *, now: datetime, window: timedelta, count: int = 24) -> list[Bucket]:
    """Results per status and queue wait over ``window``, in ``count``
    buckets; the last one ends after ``now`` (edges are aligned to the step),
    so they cover the window rounded up to a bucket.

    One range read of ``jobtable_result_stats`` (its primary key starts with
    span and bucket start), summed per chart bucket and status over queues
    and shards: no result row is read, however many the window holds.  The
    span read is the widest one the dialect's triggers write that divides the
    chart's step (``dialects.stats_read_spans``): hourly rows for 24 h and
    7 d on PostgreSQL; on SQLite, which writes only 30-second rows, the
    hours are rolled up here, in the same statement."""
    step = window / count
    epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
    end = epoch + step * ((now - epoch) // step + 1)
    start = end - step * count
    out = [Bucket(start + step * i, start + step * (i + 1)) for i in range(count)]
    first, last, step_s = int(start.timestamp()), int(end.timestamp()), int(step.total_seconds())
    spans = dialects.stats_read_spans(conn.dialect.name, step_s)
    classes = range(tables.WAIT_CLASSES)
    index = ((stats.c.bucket_start - first) // step_s).label("i")
    columns = [func.sum(stats.c[name]) for name in tables.STATS_COUNTERS]
    stmt = (
        select(index, stats.c.status, *columns)
        .where(stats.c.span.in_(spans), stats.c.bucket_start >= first, stats.c.bucket_start < last)
        .group_by(index, stats.c.status)
    )
    wait_counts = [[0] * tables.WAIT_CLASSES for _ in out]
    wait_sums = [[0.0] * tables.WAIT_CLASSES for _ in out]
    for row in conn.execute(stmt):
        i = int(row[0])
        bucket, values = out[i], row[2:]
        bucket.counts[row.status] = bucket.counts.get(row.status, 0) + int(values[0])
        bucket.retried += int(values[1])
        for k in classes:
            wait_counts[i][k] += int(values[2 + k])
            wait_sums[i][k] += float(values[2 + tables.WAIT_CLASSES + k])
    for bucket, counts, sums in zip(out, wait_counts, wait_sums):
        bucket.wait = median_wait(counts, sums)
    return out


def median_wait(counts: Sequence[int], sums: Sequence[float]) -> float | None:
    """Estimated median queue wait from per-class counts and sums (classes
    bounded by ``tables.WAIT_EDGES``): the mean wait of the class that holds
    the median.  Exact when that class's waits are alike; never off by more
    than the class's width (a factor of ten); a minority of long waits (a
    delayed or backed-off job waits its delay too) does not move it, as it
    would move a plain mean."""
    total = sum(counts)
    if total <= 0:
        return None
    seen = 0
    for n, wait_sum in zip(counts, sums):
        seen += n
        if n > 0 and 2 * seen >= total:
            return max(0.0, wait_sum / n)
    return None


def clear_cache() -> None:
    """Nothing is cached any more (the database keeps the counts); kept for
    callers of the former in-process bucket cache."""


# -- workers ----------------------------------------------------------------------


@dataclass
class WorkerRow:
    id: str
    kind: str
    hostname: str
    pid: int
    queues: list[str]
    processes: int
    started_at: datetime
    heartbeat_at: datetime
    running: int = 0  # started
    claimed: int = 0  # fetched, waiting their turn in the member's batch
    live: bool = True
    jobs: list[Row[Any]] = field(default_factory=list)


def workers(conn: Connection, *, now: datetime, stale_after: timedelta, limit: int = 500) -> list[WorkerRow]:
    rows = conn.execute(select(worker).order_by(worker.c.heartbeat_at.desc()).limit(limit))
    out = []
    for r in rows:
        try:
            queues = [str(q) for q in json.loads(r.queues)]
        except (ValueError, TypeError):
            queues = [str(r.queues)]
        out.append(
            WorkerRow(
                id=r.id,
                kind=r.kind,
                hostname=r.hostname,
                pid=r.pid,
                queues=queues,
                processes=r.processes,
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
                live=r.heartbeat_at >= now - stale_after,
            )
        )
    # Held jobs per worker through the partial index on worker_id, split as
    # every read splits them: started (running) or only claimed.
    state = reads_sql.shown_state()
    counts: dict[tuple[str, str], int] = {
        (worker_id, shown): int(n)
        for worker_id, shown, n in conn.execute(
            select(request.c.worker_id, state, func.count())
            .where(request.c.state == tables.RUNNING)
            .group_by(request.c.worker_id, state)
        )
    }
    for w in out:
        w.running = counts.get((w.id, tables.RUNNING), 0)
        w.claimed = counts.get((w.id, reads_sql.CLAIMED), 0)
    return out


# -- schedules --------------------------------------------------------------------


def schedule_states(conn: Connection) -> dict[str, Row[Any]]:
    return {r.name: r for r in conn.execute(select(schedule).order_by(schedule.c.name))}


# -- actions ----------------------------------------------------------------------


@dataclass
class ActionReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def retry_results(conn: Connection, result_ids: Sequence[int], now: datetime) -> ActionReport:
    """Enqueue the next attempt of each result's task, as ``jobtable retry``
    does (``records.retry_latest``): only the latest attempt of a finished
    task is retried, and two concurrent retries make one request."""
    report = ActionReport()
    for rid in result_ids:
        row = result_by_id(conn, rid)
        if row is None:
            report.skipped.append(f"result {rid}: not found")
            continue
        label = f"{row.task_name} {row.task_id}"
        if reads_sql.active_request(conn, row.task_id) is not None:
            report.skipped.append(f"{label}: already waiting or running")
            continue
        try:
            retry = records.retry_latest(conn, row.task_id, now)
        except (JobStateError, JobNotFound) as exc:
            report.skipped.append(f"{label}: {exc}")
            continue
        report.done.append(f"{label} (attempt {retry.attempt})")
    return report


def cancel_requests(conn: Connection, request_ids: Sequence[int], now: datetime) -> ActionReport:
    """Cancel jobs: waiting ones are recorded CANCELLED now
    (``records.cancel_waiting``); running ones are stopped by their native
    worker within a second and recorded CANCELLED then (``records.cancel_running``)."""
    report = ActionReport()
    for rid in request_ids:
        row = request_by_id(conn, rid)
        if row is None:
            report.skipped.append(f"job {rid}: gone")
            continue
        if row.state == tables.RUNNING:
            try:
                records.cancel_running(conn, row.task_id, now)
            except (JobStateError, JobNotFound) as exc:
                report.skipped.append(f"{row.task_name} {row.task_id}: {exc}")
                continue
            report.done.append(f"{row.task_name} {row.task_id} (running: its worker stops it)")
            continue
        try:
            records.cancel_waiting(conn, row.task_id, now)
        except (JobStateError, JobNotFound):
            report.skipped.append(f"{row.task_name} {row.task_id}")
            continue
        report.done.append(f"{row.task_name} {row.task_id}")
    return report


def delete_requests(conn: Connection, request_ids: Sequence[int]) -> ActionReport:
    """Delete waiting jobs without a trace (running ones are left to finish)."""
    report = ActionReport()
    if not request_ids:
        return report
    stmt = (
        delete(request)
        .where(request.c.id.in_(list(request_ids)), request.c.state.in_([tables.PENDING, tables.SCHEDULED]))
        .returning(request.c.task_name, request.c.task_id)
    )
    report.done = [f"{r.task_name} {r.task_id}" for r in conn.execute(stmt)]
    if len(report.done) < len(request_ids):
        report.skipped.append(f"{len(request_ids) - len(report.done)} job(s) already running or gone")
    return report


def delete_results(conn: Connection, result_ids: Sequence[int]) -> ActionReport:
    report = ActionReport()
    if not result_ids:
        return report
    stmt = delete(result).where(result.c.id.in_(list(result_ids))).returning(result.c.task_name, result.c.task_id)
    report.done = [f"{r.task_name} {r.task_id}" for r in conn.execute(stmt)]
    if len(report.done) < len(result_ids):
        report.skipped.append(f"{len(result_ids) - len(report.done)} result(s) already gone")
    return report


def run_requests_now(conn: Connection, request_ids: Sequence[int], now: datetime) -> ActionReport:
    """Make scheduled jobs due now (they keep their place in the message:
    the worker reads columns, and a Celery worker gets no ETA to wait for)."""
    report = ActionReport()
    for rid in request_ids:
        row = request_by_id(conn, rid)
        if row is None or row.state != tables.SCHEDULED:
            report.skipped.append(f"job {rid}: not scheduled any more")
            continue
        envelope = json.loads(row.message)
        envelope.setdefault("headers", {})["eta"] = None
        from ..messages import dumps

        conn.execute(
            update(request)
            .where(request.c.id == rid, request.c.state == tables.SCHEDULED)
            .values(state=tables.PENDING, run_at=now, message=dumps(envelope))
        )
        report.done.append(f"{row.task_name} {row.task_id}")
    if report.done:
        from ..db.dialects import wake_queues

        queues = [r.queue for r in conn.execute(select(request.c.queue).where(request.c.id.in_(list(request_ids))))]
        wake_queues(conn, queues)
    return report
