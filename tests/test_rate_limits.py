"""rate_limit enforced by the database across every worker (issue 15).

Celery's rate strings are parsed as Celery parses them and refused, naming
the option, where Celery would misbehave; a take is one conditional UPDATE
of ``jobtable_rate_limit`` (db/ratelimit_sql.py); a claimed row without a
token goes back to wait without counting as an attempt.  The assertions
read the ``started_at`` the workers recorded in the database.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

import jobtable
from jobtable import Job, register_job
from jobtable.db import clock, ratelimit_sql, tables
from jobtable.db.engine import check_schema, get_engine
from jobtable.ratelimits import MAX_RATE, RateLimitError, parse_rate
from jobtable.registry import jobs_registry
from jobtable.shim import Celery
from jobtable.worker import dispatch
from tests import ratelimit_jobs as rj
from tests.conftest import ALL_DIALECTS
from tests.worker_jobs import ROOT, requests, results, stop, wait_for, worker_env

import subprocess
import sys

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

#: How late a started_at may be after its token (scheduling of a loaded
#: 2-core machine between the take and the job's start: 0.106 s was seen at
#: load 10).  A limiter that did not space the starts puts them within
#: milliseconds: with INTERVAL 0.25 any three starts must still span 0.3 s.
SLACK = 0.2


# -- the parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, per_second",
    [
        ("10/s", 10.0),
        ("10/m", 10 / 60),
        ("10/h", 10 / 3600),
        ("0.5/s", 0.5),
        (" 6/m", 0.1),
        ("10", 10.0),
        ("10/", 10.0),
        (3, 3.0),
        (2.5, 2.5),
        ("1e2/m", 100 / 60),
    ],
)
def test_parses_celery_rate_strings(value: Any, per_second: float) -> None:
    assert parse_rate(value) == pytest.approx(per_second)


@pytest.mark.parametrize("value", [None, "", 0, 0.0, "0", "0/m", "0.0/h"])
def test_zero_none_and_empty_are_no_limit(value: Any) -> None:
    assert parse_rate(value) is None


class Hostile:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq either")

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    "value, words",
    [
        ("-1/s", "negative"),
        (-3, "negative"),
        ("inf/s", "finite"),
        (float("inf"), "finite"),
        ("nan", "finite"),
        (float("nan"), "finite"),
        ("10/x", "unknown unit 'x'"),
        ("10/M", "unknown unit 'M'"),
        ("10/min", "unknown unit 'min'"),
        ("abc", "'abc' is not a number"),
        ("ten/m", "not a number"),
        ("/m", "not a number"),
        ("1/s\x00", "not a rate"),
        ("\x00", "not a rate"),
        ("9" * 500, "not a rate"),
        (10**400, "finite"),
        ("2000000/s", "over 1,000,000 per second"),
        (1e300, "over"),
        ("1e-12/h", "less than one task a month"),
        (True, "bool"),
        (b"10/m", "bytes"),
        ([10], "list"),
        (Hostile(), "Hostile"),
    ],
)
def test_hostile_values_name_the_option_and_the_fix(value: Any, words: str) -> None:
    with pytest.raises(RateLimitError) as info:
        parse_rate(value, "rate_limit of task 'x'")
    text = str(info.value)
    assert text.startswith("rate_limit of task 'x'=")
    assert words in text
    assert '"10/m"' in text or "None for no limit" in text
    assert isinstance(info.value, ValueError) and isinstance(info.value, jobtable.ConfigurationError)


@given(
    count=st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False),
    unit=st.sampled_from(["s", "m", "h", ""]),
)
def test_parser_agrees_with_celery(count: float, unit: str) -> None:
    from celery.utils.time import rate

    text = f"{count!r}/{unit}" if unit else repr(count)
    celery = rate(text)
    seconds = {"s": 1, "m": 60, "h": 3600, "": 1}[unit]
    # count < seconds / month, not count / seconds < 1 / month: 5e-324 / 60 underflows to 0.
    if count and count < seconds / (31 * 24 * 3600):
        with pytest.raises(RateLimitError):
            parse_rate(text)
        return
    ours = parse_rate(text)
    assert (ours or 0) == pytest.approx(celery)


@given(st.text(max_size=30))
def test_parser_never_fails_otherwise(text: str) -> None:
    """Any text is a rate, no limit, or a RateLimitError -- never another error."""
    try:
        value = parse_rate(text)
    except RateLimitError as exc:
        assert str(exc).startswith("rate_limit=")
        return
    assert value is None or (0 < value <= MAX_RATE and math.isfinite(value))


# -- where it is declared ------------------------------------------------------------------


def test_job_rate_limit_checked_at_register_job() -> None:
    class BadRate(Job):
        rate_limit = "10/x"

        def run(self) -> None:
            return None

    with pytest.raises(RateLimitError, match=r"BadRate\.rate_limit='10/x'.*unknown unit"):
        register_job(BadRate)
    assert jobs_registry.default_name(BadRate) not in jobs_registry


def test_job_rate_limit_read_by_the_worker() -> None:
    assert dispatch.rate_of(jobs_registry.name_of(rj.Limited)) == pytest.approx(4.0)
    assert dispatch.rate_of(jobs_registry.name_of(rj.Free)) is None
    assert dispatch.rate_of("no.such.task") is None


def test_shim_task_option_and_default_rate_limit() -> None:
    app = Celery("ratelimit_decl")
    with pytest.raises(RateLimitError, match=r"rate_limit of task '.*bad'=-1"):

        @app.task(rate_limit=-1, name="ratelimit_decl.bad")
        def bad() -> None:
            return None

    @app.task(rate_limit="30/m", name="ratelimit_decl.own")
    def own() -> None:
        return None

    @app.task(name="ratelimit_decl.default")
    def default() -> None:
        return None

    assert dispatch.rate_of("ratelimit_decl.own") == pytest.approx(0.5)
    assert dispatch.rate_of("ratelimit_decl.default") is None
    with pytest.raises(RateLimitError, match=r"task_default_rate_limit='fast'"):
        app.conf.task_default_rate_limit = "fast"
    assert app.conf.task_default_rate_limit is None  # refused, not kept
    app.conf.task_default_rate_limit = "2/s"
    assert dispatch.rate_of("ratelimit_decl.default") == pytest.approx(2.0)
    assert dispatch.rate_of("ratelimit_decl.own") == pytest.approx(0.5)
    assert dispatch.rate_of(rj.limited_task.name) == pytest.approx(4.0)


# -- the take ----------------------------------------------------------------------------------


def test_take_spaces_tokens_by_the_interval(db_url: str) -> None:
    engine = get_engine()
    start = clock.utcnow()
    with engine.begin() as conn:
        assert ratelimit_sql.take(conn, "k", 10.0, start) is None  # the first ever
        assert ratelimit_sql.take(conn, "k", 10.0, start + timedelta(seconds=9.9)) == start + timedelta(seconds=10)
        assert ratelimit_sql.take(conn, "other", 10.0, start) is None  # keys are apart
        assert ratelimit_sql.take(conn, "k", 10.0, start + timedelta(seconds=10)) is None
        # A raised limit applies at once: 1 s after the last take, 0.5 s interval.
        assert ratelimit_sql.take(conn, "k", 0.5, start + timedelta(seconds=11)) is None
        # A taker whose "now" is older than the last take gets nothing.
        assert ratelimit_sql.take(conn, "k", 0.5, start + timedelta(seconds=10.9)) is not None
        # A token stamped by a clock far ahead does not block the key.
        conn.execute(tables.rate_limit.update().values(taken_at=start + timedelta(days=3)))
        assert ratelimit_sql.take(conn, "k", 10.0, start + timedelta(seconds=30)) is None


def test_a_rate_set_by_remote_control_is_stored_once(db_url: str) -> None:
    """``app.control.rate_limit`` (shim/celery_control.py) stores its rate in
    the key's row; the key's last token is kept; 0 means no limit."""
    engine = get_engine()
    start = clock.utcnow()
    with engine.begin() as conn:
        assert ratelimit_sql.overrides(conn) == {}
        ratelimit_sql.set_rate(conn, "fresh", 2.0)  # no row yet: made, its token free
        assert ratelimit_sql.take(conn, "fresh", 0.5, start) is None
        assert ratelimit_sql.take(conn, "k", 10.0, start) is None
        ratelimit_sql.set_rate(conn, "k", 0.1)
        ratelimit_sql.set_rate(conn, "k", 1 / 60)  # the last one wins
        assert ratelimit_sql.overrides(conn) == {"fresh": 2.0, "k": pytest.approx(1 / 60)}
        # The token taken before is kept: the next is one new interval after it.
        assert ratelimit_sql.take(conn, "k", 60.0, start + timedelta(seconds=30)) == start + timedelta(seconds=60)
        ratelimit_sql.set_rate(conn, "k", 0.0)
        assert ratelimit_sql.overrides(conn)["k"] == 0.0
        rows = conn.execute(select(tables.rate_limit.c.name)).scalars().all()
    assert sorted(rows) == ["fresh", "k"]


def _hammer(url: str, key: str, interval: float, seconds: float, barrier: Any, out: Any) -> None:
    try:
        from jobtable import settings

        settings.reset()
        jobtable.configure(database_url=url)
        engine = get_engine()
        check_schema(engine)
        taken: list[str] = []
        barrier.wait(timeout=60)
        end = time.monotonic() + seconds
        with engine.connect() as conn:
            while time.monotonic() < end:
                now = clock.utcnow()
                # The worker's own take: a deadlock's victim takes again.
                if ratelimit_sql.take_retrying(conn, conn.begin, key, interval, now) is None:
                    taken.append(now.isoformat())
        out.put(("ok", taken))
    except BaseException as exc:  # report, don't hang the parent
        out.put(("error", repr(exc)))


def test_racing_processes_never_overshoot(db_url: str) -> None:
    """Six processes take the same key as fast as they can for 1.5 s: the
    tokens granted are one interval apart (in time order), never more."""
    interval, seconds, processes = 0.1, 1.5, 6
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(db_url, "race", interval, seconds, barrier, out)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    answers = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [a for status, a in answers if status == "error"]
    assert not errors, errors
    taken = sorted(datetime.fromisoformat(t) for _s, a in answers for t in a)
    assert len(taken) >= 5  # the limit is reached, not just respected
    assert len(taken) <= 1 + math.ceil(seconds / interval) + 1
    gaps = [(b - a).total_seconds() for a, b in zip(taken, taken[1:])]
    # Each process's clock offset to the server is measured to within half a
    # round trip: a few milliseconds of slack, no more.
    assert min(gaps) >= interval - 0.005, gaps
    assert sum(len(a) > 0 for _s, a in answers) >= 2  # shared, not one lucky process


# -- in the worker -------------------------------------------------------------------------------


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.ratelimit_jobs", "worker", *args],
        env=worker_env(env),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _assert_spaced(starts: list[datetime], interval: float) -> None:
    """Started times of limited attempts: any n+1 of them span at least
    n intervals (less the slack between a token and its start)."""
    starts = sorted(starts)
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            span = (starts[j] - starts[i]).total_seconds()
            assert span >= (j - i) * interval - SLACK, (i, j, span, starts)


def test_two_workers_share_one_limit_and_other_jobs_flow(db_url: str, subprocess_env: dict[str, str]) -> None:
    limited = [rj.Limited(f"l{i}").run_in_worker() for i in range(10)]
    free = [rj.Free(f"f{i}").run_in_worker() for i in range(20)]
    assert all(limited) and all(free)
    workers = [_start(subprocess_env, "--max-processes", "2") for _ in range(2)]
    try:
        wait_for(lambda: len(results()) == 30, timeout=60, what="every job ran once")
    finally:
        outputs = [stop(w) for w in workers]
    rows = results()
    assert len({(r.task_id, r.attempt) for r in rows}) == 30, outputs
    assert all(r.status == tables.SUCCESSFUL and r.attempt == 1 and not r.retried for r in rows), outputs
    assert requests() == []
    ids = {r.uuid for r in limited if r}
    starts = [r.started_at for r in rows if r.task_id in ids]
    _assert_spaced(starts, rj.INTERVAL)
    # The first limited start to the last: nine intervals at least.
    assert (max(starts) - min(starts)).total_seconds() >= 9 * rj.INTERVAL - SLACK
    # Both workers took tokens (one limit for all, not one per worker)...
    hosts = {r.worker_id.rsplit(":", 1)[0] for r in rows if r.task_id in ids}
    assert len({r.worker_id for r in rows if r.task_id in ids}) >= 2, hosts
    # ...and the free jobs did not wait behind the limited ones.
    free_ids = {r.uuid for r in free if r}
    last_free = max(r.ended_at for r in rows if r.task_id in free_ids)
    assert last_free < max(starts), "free jobs waited for the limited ones"


def test_a_rate_stored_while_a_worker_runs_reaches_it_without_a_broadcast(
    db_url: str, subprocess_env: dict[str, str]
) -> None:
    """A rate stored while a worker without a control listener runs (a
    broadcast it never heard): its supervisor's ``rates`` duty sees the
    change and its members re-read the rates -- the Free jobs sent after it
    are spaced, those before were not."""
    before = [rj.Free(f"b{i}").run_in_worker() for i in range(6)]
    worker = _start(subprocess_env, "--max-processes", "2")
    try:
        wait_for(lambda: len(results()) == 6, timeout=60, what="the unlimited jobs ran")
        unlimited = sorted(r.started_at for r in results())
        [name] = {r.task_name for r in results()}
        with get_engine().begin() as conn:
            ratelimit_sql.set_rate(conn, name, 1 / rj.INTERVAL)
        # The duty runs every OVERRIDES_TTL: wait that long (twice, for the
        # tick) on the database's clock before sending the limited ones.
        stored_at = clock.utcnow()
        wait_for(lambda: (clock.utcnow() - stored_at).total_seconds() > 2 * ratelimit_sql.OVERRIDES_TTL,
                 timeout=10, what="the rates duty to have run")
        after = [rj.Free(f"a{i}").run_in_worker() for i in range(6)]
        wait_for(lambda: len(results()) == 12, timeout=60, what="the limited jobs ran")
    finally:
        out = stop(worker)
    ids = {r.uuid for r in after if r}
    _assert_spaced([r.started_at for r in results() if r.task_id in ids], rj.INTERVAL)
    # Before the rate, six jobs on two members did not wait for each other.
    assert (unlimited[-1] - unlimited[0]).total_seconds() < 5 * rj.INTERVAL - SLACK, (unlimited, out)


def test_a_stored_rate_replaces_the_codes_on_any_worker(db_url: str, subprocess_env: dict[str, str]) -> None:
    """A rate stored by remote control holds on a worker without a control
    listener too (its members read the stored rates when they start): the
    unlimited Free jobs are spaced by it."""
    free = [rj.Free(f"f{i}").run_in_worker() for i in range(6)]
    [name] = {r.task_name for r in requests()}
    with get_engine().begin() as conn:
        ratelimit_sql.set_rate(conn, name, 1 / rj.INTERVAL)
    worker = _start(subprocess_env, "--max-processes", "2")
    try:
        wait_for(lambda: len(results()) == 6, timeout=60, what="the jobs ran")
    finally:
        out = stop(worker)
    rows = results()
    assert {r.task_id for r in rows} == {f.uuid for f in free if f}, out
    _assert_spaced([r.started_at for r in rows], rj.INTERVAL)


def test_a_limited_job_is_not_counted_as_an_attempt(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """Six jobs with one retry each, limited together: every one ends after
    exactly two real attempts (the first fails), however many times it
    went back to wait for a token."""
    jobs = [rj.FailsOnce(str(tmp_path / f"m{i}")).run_in_worker() for i in range(6)]
    assert all(jobs)
    worker = _start(subprocess_env, "--max-processes", "2")
    try:
        wait_for(lambda: len(results()) == 12, timeout=60, what="two attempts each")
    finally:
        out = stop(worker)
    rows = results()
    by_task: dict[str, list[Any]] = {}
    for r in rows:
        by_task.setdefault(r.task_id, []).append(r)
    assert len(by_task) == 6, out
    for attempts in by_task.values():
        attempts.sort(key=lambda r: r.attempt)
        assert [(r.attempt, r.status) for r in attempts] == [(1, tables.ERRORED), (2, tables.SUCCESSFUL)], out
    _assert_spaced([r.started_at for r in rows], rj.INTERVAL)
    assert requests() == []


def test_shim_task_rate_limit_in_the_native_worker(db_url: str, subprocess_env: dict[str, str]) -> None:
    sent = [rj.limited_task.apply_async((f"s{i}",), queue="default") for i in range(6)]
    worker = _start(subprocess_env, "--max-processes", "2")
    try:
        wait_for(lambda: len(results()) == 6, timeout=60, what="the shim tasks ran")
    finally:
        out = stop(worker)
    rows = results()
    assert {r.task_id for r in rows} == {s.id for s in sent}, out
    assert all(r.status == tables.SUCCESSFUL and r.attempt == 1 for r in rows), out
    _assert_spaced([r.started_at for r in rows], rj.INTERVAL)


def test_deferred_rows_wait_scheduled_keeping_their_message(db_url: str, subprocess_env: dict[str, str]) -> None:
    """While a key's token is taken, a worker sends its rows back to wait:
    scheduled at the token's time, attempt and message untouched."""
    engine = get_engine()
    far = clock.utcnow() + timedelta(seconds=30)
    with engine.begin() as conn:
        # A token taken "just now" by someone else, with a 1-per-minute limit
        # would block for a minute; 240/m: a quarter second -- so take it a
        # little ahead of now (within the future slack) to hold it for ~30 s.
        conn.execute(tables.rate_limit.insert().values(name=jobs_registry.name_of(rj.Limited), taken_at=far))
    request = rj.Limited("held").run_in_worker()
    assert request is not None
    before = requests()[0]
    worker = _start(subprocess_env, "--max-processes", "1")
    try:
        row = wait_for(
            lambda: next((r for r in requests() if r.state == tables.SCHEDULED), None), timeout=30, what="sent back"
        )
    finally:
        stop(worker)
    assert results() == []
    assert (row.id, row.attempt, row.retries, row.message, row.priority) == (
        before.id, before.attempt, before.retries, before.message, before.priority
    )
    assert row.worker_id is None
    assert abs((row.run_at - (far + timedelta(seconds=rj.INTERVAL))).total_seconds()) < 0.01
    with engine.connect() as conn:
        assert conn.execute(select(tables.rate_limit.c.taken_at)).scalar() == far


def test_celery_apps_bad_rate_limit_stops_the_native_worker_at_start() -> None:
    celery = pytest.importorskip("celery")
    from jobtable.shim import celery_runner

    app = celery.Celery("ratelimit_bad", set_as_current=False)

    @app.task(name="ratelimit_bad.t", rate_limit="10/x", shared=False)
    def bad() -> None:
        return None

    app.finalize(auto=True)
    with pytest.raises(RateLimitError, match=r"rate_limit of task 'ratelimit_bad\.t'='10/x'.*unknown unit"):
        celery_runner._check_rates(app)
    app.tasks["ratelimit_bad.t"].rate_limit = "5/m"
    app.conf.task_default_rate_limit = "-5/m"
    with pytest.raises(RateLimitError, match=r"task_default_rate_limit='-5/m' is negative"):
        celery_runner._check_rates(app)


def test_register_jobs_gives_celery_the_jobs_rate_limit() -> None:
    celery = pytest.importorskip("celery")
    from jobtable.shim.celery_jobs import register_jobs

    app = celery.Celery("ratelimit_jobs_celery", set_as_current=False)
    name = jobs_registry.name_of(rj.Limited)
    register_jobs(app, [name, jobs_registry.name_of(rj.Free)], schedules=False)
    app.finalize(auto=True)
    assert app.tasks[name].rate_limit == rj.RATE
    assert app.tasks[jobs_registry.name_of(rj.Free)].rate_limit is None
