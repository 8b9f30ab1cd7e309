"""jobtable_result_stats: the database keeps it equal to the aggregate of
jobtable_result whoever writes results, and the overview reads it."""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, update

from jobtable.dashboard import queries
from jobtable.db import clock, dialects, migrate, operations_sql, result_rows, tables
from jobtable.db import engine as db_engine

from . import dashboard_support as support
from .dashboard_client import client
from .test_dashboard_routes import _card
from .worker_jobs import Add, Boom, results, start_worker, stop, wait_for, worker_env
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

stats = tables.result_stats
result = tables.result

Key = tuple[int, int, str, str]


def _bucket(when: datetime, span: int, milliseconds: bool = False) -> int:
    """The bucket a time falls in.  ``milliseconds``: as SQLite's date
    functions see it -- they keep milliseconds, rounding the rest, so a
    result ending 0.4 ms before a bucket edge is counted after it there."""
    stamp = when.timestamp()
    if milliseconds:
        stamp = round(stamp, 3)
    return math.floor(stamp / span) * span


def _dialect() -> str:
    return db_engine.get_engine().dialect.name


def _fine_from(now: datetime) -> float:
    """Fine buckets older than this may be gone: pruned (PostgreSQL) or
    folded into hourly rows (SQLite)."""
    return now.timestamp() - dialects.STATS_FINE_KEEP + 60


def _expected(rows: Iterable[Any], now: datetime) -> dict[Key, tuple[int, int, int]]:
    """(results, retried, waits counted) per (span, bucket, queue, status),
    computed from result rows in Python."""
    out: Counter[tuple[Key, str]] = Counter()
    for r in rows:
        for span in tables.STATS_SPANS:
            key = (span, _bucket(r.ended_at, span, milliseconds=_dialect() == "sqlite"), r.queue, r.status)
            if span == 30 and key[1] < _fine_from(now):
                continue  # fine buckets are pruned after two hours
            out[(key, "results")] += 1
            out[(key, "retried")] += bool(r.retried)
            waited = r.status == tables.SUCCESSFUL and r.started_at is not None and r.requested_at is not None
            out[(key, "waits")] += waited
    keys = {k for k, _ in out}
    return {k: (out[(k, "results")], out[(k, "retried")], out[(k, "waits")]) for k in keys}


def _stored(now: datetime) -> dict[Key, tuple[int, int, int]]:
    """The same from jobtable_result_stats, summed over shards, each span
    read from the stored rows the dashboard reads for it (on SQLite an
    hour is its hourly row plus its 30-second rows)."""
    waits = sum(stats.c[f"wait_count_{i}"] for i in range(tables.WAIT_CLASSES))
    stmt = select(
        stats.c.span, stats.c.bucket_start, stats.c.queue, stats.c.status,
        func.sum(stats.c.results), func.sum(stats.c.retried), func.sum(waits),
    ).group_by(stats.c.span, stats.c.bucket_start, stats.c.queue, stats.c.status)
    fine_from = _fine_from(now)
    with db_engine.connect() as conn:
        stored = list(conn.execute(stmt))
    sums: Counter[tuple[Key, int]] = Counter()
    for span in tables.STATS_SPANS:
        sources = dialects.stats_read_spans(_dialect(), span)
        for row_span, start, queue, status, n, retried, waited in stored:
            if row_span not in sources or (span == 30 and start < fine_from):
                continue
            key = (span, int(start) - int(start) % span, queue, status)
            for i, value in enumerate((n, retried, waited)):
                sums[(key, i)] += int(value)
    keys = {k for k, _ in sums}
    out = {k: (sums[(k, 0)], sums[(k, 1)], sums[(k, 2)]) for k in keys}
    return {k: v for k, v in out.items() if v != (0, 0, 0)}


def _all_results() -> list[Any]:
    with db_engine.connect() as conn:
        return list(conn.execute(select(result)))


def assert_stats_match() -> None:
    now = datetime.now(timezone.utc)
    assert _stored(now) == _expected(_all_results(), now)


def _result_row(*, ended_at: datetime, status: str = tables.SUCCESSFUL, queue: str = "default",
                retried: bool = False, wait: float = 2.0) -> dict[str, Any]:
    return {
        "task_id": str(uuid.uuid4()), "task_name": "tests.stats.Job", "queue": queue, "priority": 0, "attempt": 1,
        "retries": 0, "concurrency_key": None, "status": status, "requested_at": ended_at - timedelta(seconds=wait + 1),
        "started_at": ended_at - timedelta(seconds=1), "ended_at": ended_at, "worker_id": "native:stats",
        "message": None, "return_value": None, "error_type": None, "error_message": None, "traceback": None,
        "retried": retried, "meta": None,
    }


def _insert(rows: list[dict[str, Any]]) -> None:
    with db_engine.connect() as conn, conn.begin():
        result_rows.insert_results(conn, rows)


def test_stats_follow_the_native_worker(db_url: str, subprocess_env: dict[str, str]) -> None:
    for i in range(5):
        Add(i, 1).run_in_worker()
    Add(1, 1).run_in_worker(queue="other")
    Boom().run_in_worker(retries=2)
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "2", "--queue", "default", "--queue", "other")
    try:
        # The worker's own results table is the event: its retries are due later.
        wait_for(lambda: len(results()) == 9, timeout=30, what="nine results")
    finally:
        stop(proc)
    rows = _all_results()
    assert Counter((r.status, r.retried) for r in rows) == {
        (tables.SUCCESSFUL, False): 6, (tables.ERRORED, True): 2, (tables.ERRORED, False): 1,
    }
    assert_stats_match()
    with db_engine.connect() as conn:
        buckets = queries.buckets(conn, now=clock.utcnow(), window=timedelta(hours=1))
    counts, retried = queries.window_totals(buckets)
    assert (counts[tables.SUCCESSFUL], counts[tables.ERRORED], retried) == (6, 3, 2)
    assert any(b.wait is not None for b in buckets)


def test_stats_follow_the_celery_result_backend(db_url: str) -> None:
    """The backend's writes: a STARTED row replaced by the final state (an
    upsert: the insert and the update triggers), RETRY states (ERRORED and
    retried), and forget() (a delete)."""
    pytest.importorskip("celery")
    from types import SimpleNamespace

    from celery import Celery

    from jobtable.shim.backend import JobtableBackend

    app = Celery("stats", broker="memory://", backend="jobtable+" + db_url)
    app.conf.update(result_extended=True)
    backend = JobtableBackend(app=app, url="jobtable+" + db_url)

    def request(task_id: str, retries: int = 0, queue: str = "celery") -> Any:
        return SimpleNamespace(id=task_id, task="tests.stats.task", retries=retries, hostname="celery@h",
                               delivery_info={"routing_key": queue}, args=[], kwargs={})

    ok, flaky, gone = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    backend.store_result(ok, None, "STARTED", request=request(ok))
    assert_stats_match()
    backend.store_result(ok, 3, "SUCCESS", request=request(ok))
    backend.store_result(flaky, ValueError("again"), "RETRY", request=request(flaky, 0, "q2"))
    backend.store_result(flaky, ValueError("again"), "RETRY", request=request(flaky, 1, "q2"))
    backend.store_result(flaky, 7, "SUCCESS", request=request(flaky, 2, "q2"))
    backend.store_result(gone, 1, "SUCCESS", request=request(gone))
    backend.forget(gone)
    rows = _all_results()
    assert Counter((r.queue, r.status, r.retried) for r in rows) == {
        ("celery", tables.SUCCESSFUL, False): 1, ("q2", tables.ERRORED, True): 2, ("q2", tables.SUCCESSFUL, False): 1,
    }
    assert_stats_match()
    with db_engine.connect() as conn:
        counts, retried = queries.window_totals(queries.buckets(conn, now=clock.utcnow(), window=timedelta(hours=1)))
    assert (counts[tables.SUCCESSFUL], counts[tables.ERRORED], counts.get("STARTED", 0), retried) == (2, 2, 0, 2)


def test_concurrent_writers_give_exact_totals(db_url: str) -> None:
    """Several connections insert results into the same buckets at once while
    another deletes old results (retention): nothing is lost or counted twice."""
    now = clock.utcnow()
    old = [_result_row(ended_at=now - timedelta(days=3, seconds=i)) for i in range(60)]
    _insert(old)
    writers, batches, per_batch = 4, 10, 20
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            barrier.wait(timeout=60)
            for b in range(batches):
                ended = clock.utcnow()
                _insert([
                    _result_row(ended_at=ended, status=(tables.SUCCESSFUL, tables.ERRORED)[(k + i) % 2],
                                queue=f"q{(b + i) % 3}", retried=i % 5 == 0)
                    for i in range(per_batch)
                ])
        except BaseException as exc:  # reported below
            errors.append(exc)

    def retention() -> None:
        try:
            barrier.wait(timeout=60)
            while True:
                with db_engine.connect() as conn, conn.begin():
                    if not operations_sql.clear_results(conn, now - timedelta(days=1), batch=7):
                        return
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    threads.append(threading.Thread(target=retention))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    rows = _all_results()
    assert len(rows) == writers * batches * per_batch
    assert_stats_match()
    with db_engine.connect() as conn:
        total = conn.execute(select(func.sum(stats.c.results)).where(
            stats.c.span.in_(dialects.stats_read_spans(_dialect(), 3600)))).scalar_one()
        oldest = conn.execute(select(func.min(stats.c.bucket_start))).scalar_one()
    assert int(total) == len(rows)
    # The buckets of the deleted results are pruned, not kept at zero.
    assert oldest >= _bucket(now - timedelta(days=1), 3600)


def test_retried_follows_updates_and_deletions_are_subtracted(db_url: str) -> None:
    dash = client()
    failed = support.add_result(tables.ERRORED, error_type="ValueError", ago=timedelta(minutes=10))
    support.add_result(tables.SUCCESSFUL, ago=timedelta(minutes=10))
    extra = support.add_result(tables.SUCCESSFUL, ago=timedelta(minutes=10))
    page = dash.get("/?window=1h").text
    assert (_card(page, "errored"), _card(page, "retried"), _card(page, "successful")) == ("1", "0", "2")
    # Retrying from the dashboard marks the earlier attempt retried (an UPDATE).
    assert dash.act("retry", [failed]).status_code == 303
    page = dash.get("/?window=1h").text
    assert (_card(page, "errored"), _card(page, "retried")) == ("1", "1")
    # Deleting a result removes it from the counts: the overview matches the results list.
    assert dash.act("delete-results", [extra]).status_code == 303
    assert _card(dash.get("/?window=1h").text, "successful") == "1"
    # An update that moves a result (status, end time) moves its count.
    with db_engine.connect() as conn, conn.begin():
        conn.execute(update(result).where(result.c.id == failed).values(
            status=tables.LOST, ended_at=clock.utcnow() - timedelta(hours=3)))
    page = dash.get("/?window=1h").text
    assert (_card(page, "errored"), _card(page, "lost"), _card(page, "retried")) == ("0", "0", "0")
    page = dash.get("/?window=24h").text
    assert (_card(page, "lost"), _card(page, "retried")) == ("1", "1")
    assert_stats_match()


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
def test_overview_equals_a_direct_count_of_results(db_url: str, window: str) -> None:
    now = clock.utcnow()
    rng = random.Random(7)
    statuses = [tables.SUCCESSFUL] * 6 + [tables.ERRORED, tables.LOST, tables.CANCELLED, tables.DEFERRED]
    rows = [
        _result_row(ended_at=now - timedelta(seconds=rng.uniform(0, 8 * 86400 if i % 2 else 7200)),
                    status=rng.choice(statuses), queue=rng.choice(["a", "b", "c"]), retried=rng.random() < 0.2,
                    wait=rng.choice([0.005, 0.3, 0.4, 4.0, 3000.0]))
        for i in range(400)
    ]
    _insert(rows)
    assert_stats_match()
    span = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}[window]
    with db_engine.connect() as conn:
        buckets = queries.buckets(conn, now=now, window=span)
    for bucket in buckets:
        inside = [r for r in rows if bucket.start <= r["ended_at"] < bucket.end]
        direct = Counter(r["status"] for r in inside)
        assert {s: n for s, n in bucket.counts.items() if n} == dict(direct)
        assert bucket.retried == sum(r["retried"] for r in inside)
    page = client().get(f"/?window={window}").text
    cards = {key: _card(page, key) for key in ("successful", "errored", "lost", "retried")}
    # The page takes its own "now", a moment later: its window may have moved
    # on by one bucket.
    expected = []
    for moment in (now, clock.utcnow()):
        with db_engine.connect() as conn:
            edges = queries.buckets(conn, now=moment, window=span)
        inside = [r for r in rows if edges[0].start <= r["ended_at"] < edges[-1].end]
        expected.append({
            **{s.lower(): str(sum(r["status"] == s for r in inside)) for s in (tables.SUCCESSFUL, tables.ERRORED,
                                                                              tables.LOST)},
            "retried": str(sum(r["retried"] for r in inside)),
        })
    assert cards in expected


def test_median_wait_is_robust_to_a_few_long_waits(db_url: str) -> None:
    now = clock.utcnow()
    waits = [0.2, 0.3, 0.4, 0.5, 0.6, 3600.0, 86400.0]  # two delayed jobs
    _insert([_result_row(ended_at=now - timedelta(minutes=1), wait=w) for w in waits])
    with db_engine.connect() as conn:
        buckets = queries.buckets(conn, now=now, window=timedelta(hours=1))
    (wait,) = [b.wait for b in buckets if b.wait is not None]
    assert wait == pytest.approx(0.4, abs=0.01)  # the mean of the 0.1-1 s class, which holds the median
    assert queries.median_wait([0] * tables.WAIT_CLASSES, [0.0] * tables.WAIT_CLASSES) is None


def _direct_wait(rows: Iterable[dict[str, Any]]) -> float | None:
    """The overview's wait estimate computed from result rows."""
    counts, sums = [0] * tables.WAIT_CLASSES, [0.0] * tables.WAIT_CLASSES
    for r in rows:
        if r["status"] != tables.SUCCESSFUL:
            continue
        wait = (r["started_at"] - r["requested_at"]).total_seconds()
        k = next((i for i, edge in enumerate(tables.WAIT_EDGES) if wait < edge), len(tables.WAIT_EDGES))
        counts[k] += 1
        sums[k] += wait
    return queries.median_wait(counts, sums)


@pytest.mark.parametrize("window", [timedelta(hours=24), timedelta(days=7)])
def test_wide_buckets_equal_a_direct_count_at_their_edges(db_url: str, window: timedelta) -> None:
    """Results on both sides of every chart-bucket edge, and of hour edges
    inside buckets: each lands in its bucket, with its retried flag and wait.
    On SQLite the hours are summed from 30-second rows at read time (the
    triggers write no other span, nothing was folded yet); on PostgreSQL the
    hourly rows are read."""
    now = clock.utcnow()
    with db_engine.connect() as conn:
        edges = [b.start for b in queries.buckets(conn, now=now, window=window)]
    rng = random.Random(11)
    rows = []
    for i, edge in enumerate(edges[1:] + [edges[0] + timedelta(hours=1)]):
        for offset in (timedelta(milliseconds=-1), timedelta(0), timedelta(seconds=29, microseconds=999000)):
            ended = edge + offset
            if ended < now:
                rows.append(_result_row(ended_at=ended, status=rng.choice([tables.SUCCESSFUL, tables.ERRORED]),
                                        queue=f"q{i % 2}", retried=rng.random() < 0.3,
                                        wait=rng.choice([0.002, 0.05, 0.5, 5.0, 50.0])))
    _insert(rows)
    assert_stats_match()
    with db_engine.connect() as conn:
        spans = set(conn.execute(select(stats.c.span).distinct()).scalars())
        buckets = queries.buckets(conn, now=now, window=window)
    assert spans <= set(tables.STATS_SPANS)
    for bucket in buckets:
        inside = [r for r in rows if bucket.start <= r["ended_at"] < bucket.end]
        assert {s: n for s, n in bucket.counts.items() if n} == dict(Counter(r["status"] for r in inside))
        assert bucket.retried == sum(r["retried"] for r in inside)
        expected = _direct_wait(inside)
        # SQLite computes waits with julianday(): about 10 us of error.
        assert bucket.wait == (None if expected is None else pytest.approx(expected, rel=1e-3, abs=1e-4))
    assert sum(sum(b.counts.values()) for b in buckets) == len(rows)


def test_retention_prunes_the_stats_of_deleted_results(db_url: str) -> None:
    """Retention (batches of results) subtracts what it deletes and drops
    the stats rows of buckets older than the oldest remaining result; other
    deletions only subtract."""
    now = clock.utcnow()
    old = [_result_row(ended_at=now - timedelta(days=5, seconds=37 * i), queue=f"q{i % 3}") for i in range(2500)]
    kept = [_result_row(ended_at=now - timedelta(hours=30, seconds=i)) for i in range(5)]
    _insert(old + kept)
    assert_stats_match()
    batches = 0
    with db_engine.connect() as conn, conn.begin():
        while operations_sql.clear_results(conn, now - timedelta(days=2), batch=1000):
            batches += 1
    assert batches == 3
    assert_stats_match()
    oldest_kept = min(r["ended_at"] for r in kept)
    with db_engine.connect() as conn:
        rows = list(conn.execute(select(stats.c.span, stats.c.bucket_start, stats.c.results)))
    assert rows and all(start + span > oldest_kept.timestamp() for span, start, _ in rows)
    assert sum(n for span, _, n in rows if span in dialects.stats_read_spans(_dialect(), 3600)) == len(kept)
    # Deleting the kept results by hand (not retention) leaves their rows at
    # zero: counts are right, the rows go with the next retention run.
    with db_engine.connect() as conn, conn.begin():
        conn.execute(result.delete())
    assert_stats_match()
    with db_engine.connect() as conn, conn.begin():
        assert operations_sql.clear_results(conn, now - timedelta(days=2)) == 0
        assert conn.execute(select(func.count()).select_from(stats)).scalar_one() == 0


@pytest.mark.parametrize("window", [timedelta(hours=1), timedelta(hours=24), timedelta(days=7)])
def test_retention_folds_old_fine_rows_into_hours(db_url: str, window: timedelta) -> None:
    """SQLite's triggers write 30-second rows; each retention batch folds
    those of buckets older than the fine window into hourly rows.  Counts
    stay exact, also when a result of an already folded hour is updated or
    deleted afterwards (its fine row is then negative until the next fold).
    On PostgreSQL, whose triggers write hourly rows, the same holds.

    Deterministic whatever the time of day: ``now`` is the last full hour
    and every result ends in the middle of a 30-second bucket (15 s from
    any bucket edge of every span and chart step, all multiples of 30 s),
    so the seeded rows fall in the same hours on every run; only the 7-day
    chart's grouping of hours into 7-hour steps follows the hour of day."""
    now = clock.utcnow().replace(minute=0, second=0, microsecond=0)
    rng = random.Random(3)

    def ended(max_age: float) -> datetime:
        return now - timedelta(seconds=30 * math.floor(rng.uniform(0, max_age) / 30) + 15)

    rows = [
        _result_row(ended_at=ended(3 * 86400 if i % 3 else 3 * 3600),
                    status=rng.choice([tables.SUCCESSFUL, tables.ERRORED, tables.LOST]),
                    queue=rng.choice(["a", "b"]), retried=rng.random() < 0.2, wait=rng.choice([0.05, 3.0]))
        for i in range(600)
    ]
    _insert(rows)
    with db_engine.connect() as conn, conn.begin():
        cleared_at = clock.utcnow()  # the fold's own clock, not the rows' hour-aligned now
        assert operations_sql.clear_results(conn, now - timedelta(days=30)) == 0
    fold_before = cleared_at.timestamp() - dialects.STATS_FINE_KEEP
    with db_engine.connect() as conn:
        oldest_fine = conn.execute(select(func.min(stats.c.bucket_start)).where(stats.c.span == 30)).scalar_one()
    if _dialect() in ("sqlite", "mysql"):  # both fold fine rows at retention
        assert oldest_fine >= _bucket(datetime.fromtimestamp(fold_before, timezone.utc), 3600)
    else:
        assert oldest_fine > fold_before - 120  # the delete trigger's own pruning
    assert_stats_match()
    # Move one old result, delete another: after the fold, before the next.
    old = sorted((r for r in rows if r["ended_at"] < now - timedelta(hours=5)), key=lambda r: r["ended_at"])
    with db_engine.connect() as conn, conn.begin():
        conn.execute(update(result).where(result.c.task_id == old[0]["task_id"]).values(
            status=tables.CANCELLED, retried=True, ended_at=old[-1]["ended_at"]))
        conn.execute(result.delete().where(result.c.task_id == old[1]["task_id"]))
    old[0].update(status=tables.CANCELLED, retried=True, ended_at=old[-1]["ended_at"])
    rows.remove(old[1])
    assert_stats_match()
    with db_engine.connect() as conn:
        buckets = queries.buckets(conn, now=now, window=window)
    for bucket in buckets:
        inside = [r for r in rows if bucket.start <= r["ended_at"] < bucket.end]
        assert {s: n for s, n in bucket.counts.items() if n} == dict(Counter(r["status"] for r in inside))
        assert bucket.retried == sum(r["retried"] for r in inside)
    with db_engine.connect() as conn, conn.begin():
        operations_sql.clear_results(conn, now - timedelta(days=30))
    assert_stats_match()


def test_the_migration_counts_existing_results(db_url: str) -> None:
    """Migration 0002 on a table that already holds results: the backfill
    counts them once (and on SQLite folds the old 30-second rows into hours
    at once), then the triggers take over."""
    engine = db_engine.get_engine()
    now = clock.utcnow()
    rng = random.Random(5)
    rows = [
        _result_row(ended_at=now - timedelta(seconds=rng.uniform(0, 4 * 86400 if i % 2 else 3600)),
                    status=rng.choice([tables.SUCCESSFUL, tables.ERRORED]), queue=rng.choice(["a", "b"]),
                    retried=rng.random() < 0.2)
        for i in range(300)
    ]
    migrate.downgrade(engine, "0001")
    try:
        with engine.begin() as conn:  # not db_engine.connect(): it wants the head revision
            result_rows.insert_results(conn, rows)
    finally:
        migrate.upgrade(engine)
    assert_stats_match()
    with db_engine.connect() as conn:
        oldest_fine = conn.execute(select(func.min(stats.c.bucket_start)).where(stats.c.span == 30)).scalar_one()
        buckets = queries.buckets(conn, now=now, window=timedelta(days=7))
    if _dialect() in ("sqlite", "mysql"):  # both fold fine rows at retention
        assert oldest_fine >= _bucket(now - timedelta(seconds=dialects.STATS_FINE_KEEP + 3600), 3600)
    assert sum(b.counts.get(tables.SUCCESSFUL, 0) for b in buckets) == sum(
        r["status"] == tables.SUCCESSFUL for r in rows)
    _insert([_result_row(ended_at=now)])
    assert_stats_match()


@pytest.mark.parametrize("dialect", ["postgresql"])  # SQLite has one writer at a time
def test_open_transactions_never_wait_on_each_others_stats_rows(db_url: str, dialect: str) -> None:
    """Two transactions write results into the same buckets in opposite
    orders and stay open: each holds its own shard, so neither waits (with
    shared rows the second statement of one would wait for the other, and
    the last one deadlock).  One thread drives both: a wait would hang, so a
    lock timeout turns it into an error."""
    engine = db_engine.get_engine()
    now = clock.utcnow()
    with engine.connect() as a, engine.connect() as b:
        txa, txb = a.begin(), b.begin()
        for conn in (a, b):
            conn.exec_driver_sql("SET LOCAL lock_timeout = '3s'")
        result_rows.insert_results(a, [_result_row(ended_at=now, queue="x")])
        result_rows.insert_results(b, [_result_row(ended_at=now, queue="y")])
        result_rows.insert_results(a, [_result_row(ended_at=now, queue="y"), _result_row(ended_at=now, queue="z")])
        result_rows.insert_results(b, [_result_row(ended_at=now, queue="x"), _result_row(ended_at=now, queue="z")])
        txa.commit()
        txb.commit()
    assert_stats_match()
    with db_engine.connect() as conn:
        shards = conn.execute(select(stats.c.shard).distinct()).scalars().all()
    assert len(shards) == 2
