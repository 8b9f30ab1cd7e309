"""compat_tests/tasks.py run three ways, with the same assertions:

- ``celery``: a real ``celery worker`` over the jobtable transport, results in
  the jobtable result backend; the test sends with Celery;
- ``native``: ``jobtable worker --celery-app compat_tests.app:app`` (Celery
  installed, its tracer run by jobtable's worker); the test sends with Celery;
- ``shim``: ``jobtable --app compat_tests.tasks worker`` with ``import celery``
  blocked in the worker; the test sends with ``jobtable.shim``.

Each (mode, database) pair starts one worker for the whole module.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from compat_tests.conftest import (
    ALL_DIALECTS,
    ROOT,
    Worker,
    api_loaded,
    drop_redis_keys,
    empty_tables,
    lines,
    redis_prefix,
    redis_up,
    redis_url,
    wait_for,
)

# The celery mode on every dialect (MySQL too); native and shim on SQLite
# and PostgreSQL; redis once (compat_tests/conftest.py: compat_params).
pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

_URL_FIXTURES = {"postgresql": "pg_url", "sqlite": "sqlite_url", "mysql": "mysql_url"}

#: Where jobtable differs from the reference (Celery on Redis) on purpose:
#: difference -> the modes it concerns.  Each is a row of the migration
#: guide's differences table (test_every_difference_is_in_the_guide).
DIFFERENCES = {
    "expired task stays PENDING": ("celery",),
    "priority: higher runs first": ("celery", "native", "shim"),
}


def differs(compat: Any, difference: str) -> bool:
    """Whether ``compat``'s mode behaves as the difference says (the
    assertion of the reference applies otherwise)."""
    return compat.mode in DIFFERENCES[difference]


@pytest.fixture(scope="module")
def compat(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    mode, dialect = request.param
    if mode == "redis":
        # Not a skip: without the reference, parity is not checked at all.
        url = redis_url(request)
        assert redis_up(url), f"no Redis at {url}: start it (scripts/test does), or set COMPAT_REDIS_SERVER"
    else:
        url = request.getfixturevalue(_URL_FIXTURES[dialect])
        empty_tables(url)
    tmp = tmp_path_factory.mktemp(f"compat-{mode}-{dialect}")
    with api_loaded(mode, url) as (api, tasks):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if mode != "redis":
            env["JOBTABLE_DATABASE_URL"] = url
        worker = Worker(mode, env, tmp / "worker.log", api.QUEUE, processes=2)
        try:
            yield SimpleNamespace(mode=mode, dialect=dialect, api=api, t=tasks, env=env, url=url, worker=worker)
        finally:
            worker.stop()
            if mode == "redis":
                drop_redis_keys(url, redis_prefix())


def _tags(path: Path) -> list[str]:
    return [line[0] for line in lines(path)]


# -- return values and exceptions ------------------------------------------------------------


def test_return_values(compat: Any) -> None:
    t = compat.t
    sent = t.add.delay(2, 3)
    assert sent.get(timeout=30) == 5
    assert sent.state == compat.api.states.SUCCESS and sent.successful() and sent.ready()
    assert sent.result == 5
    value = {"name": "Ada", "tags": ["x", 1, 2.5, None, True], "nested": {"k": [1, [2, 3]]}}
    assert t.echo.delay(value).get(timeout=30) == value
    assert t.echo.apply_async(("kw",)).get(timeout=30) == "kw"


def test_exceptions_surface_with_their_type_and_message(compat: Any) -> None:
    t, states = compat.t, compat.api.states
    sent = t.fail.delay("no luck")
    with pytest.raises(ValueError, match="no luck"):
        sent.get(timeout=30)
    assert sent.state == states.FAILURE and sent.failed()
    assert isinstance(sent.result, ValueError) and "Traceback" in (sent.traceback or "")
    assert isinstance(sent.get(timeout=5, propagate=False), ValueError)
    # The project's own exception class, not a stand-in.
    declined = t.decline.delay(42)
    with pytest.raises(t.PaymentDeclined, match="card declined for 42"):
        declined.get(timeout=30)


# -- retries ------------------------------------------------------------------------------------


def test_retry_counts_and_delays(compat: Any, tmp_path: Path) -> None:
    t = compat.t
    path = tmp_path / "flaky.log"
    sent = t.flaky.delay(str(path), 2, 0.5)
    assert sent.get(timeout=30) == 2
    runs = lines(path)
    assert [(r[0], int(r[1])) for r in runs] == [(sent.id, 0), (sent.id, 1), (sent.id, 2)]
    times = [float(r[2]) for r in runs]
    # countdown=0.5: no retry ran before it was due.
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:])), times
    assert sent.state == compat.api.states.SUCCESS


def test_retry_past_max_retries_raises_the_exc(compat: Any, tmp_path: Path) -> None:
    path = tmp_path / "always.log"
    sent = compat.t.always_retry.delay(str(path))
    with pytest.raises(KeyError, match="still broken"):
        sent.get(timeout=30)
    assert [int(r[1]) for r in lines(path)] == [0, 1]  # max_retries=1
    assert sent.state == compat.api.states.FAILURE


# -- countdown, ETA, expires, priority ------------------------------------------------------------


def test_countdown_and_eta_are_not_run_early(compat: Any, tmp_path: Path) -> None:
    t, states = compat.t, compat.api.states
    path = tmp_path / "delayed.log"
    now = datetime.now(timezone.utc)
    late = t.record.apply_async((str(path), "countdown"), countdown=1.5)
    at = t.record.apply_async((str(path), "eta"), eta=now + timedelta(seconds=1.5))
    assert late.state == states.PENDING and not late.ready()
    assert late.get(timeout=30) == "countdown" and at.get(timeout=30) == "eta"
    assert late.state == states.SUCCESS
    ran = {r[0]: float(r[2]) for r in lines(path)}
    assert set(ran) == {"countdown", "eta"}
    assert all(when >= now.timestamp() + 1.45 for when in ran.values()), (now.timestamp(), ran)


def test_expired_task_is_not_run(compat: Any, tmp_path: Path) -> None:
    t, states = compat.t, compat.api.states
    path = tmp_path / "expires.log"
    expired = t.record.apply_async((str(path), "expired"), expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    marker = t.record.apply_async((str(path), "marker"))
    assert marker.get(timeout=30) == "marker"
    if differs(compat, "expired task stays PENDING"):
        # Through the transport the broker drops it, as RabbitMQ drops a
        # message past its TTL: no worker sees it, so no result is stored
        # and AsyncResult stays PENDING.
        wait_for(lambda: not _request_rows(compat.url, expired.id), what="expired message dropped")
        assert expired.state == states.PENDING
    else:
        # The reference: Celery's worker discards it and records REVOKED;
        # jobtable's worker records it CANCELLED, which reads REVOKED.
        wait_for(lambda: expired.state == states.REVOKED, what="expired task revoked")
    assert _tags(path) == ["marker"]


def _request_rows(url: str, task_id: str) -> list[Any]:
    from sqlalchemy import select

    from jobtable.db import engine as db_engine
    from jobtable.db import tables

    t = tables.request
    with db_engine.get_engine(url).connect() as conn:
        return list(conn.execute(select(t).where(t.c.task_id == task_id)))


def test_priority_higher_first(compat: Any, tmp_path: Path, worker_factory: Any) -> None:
    # Enqueued before any worker consumes the queue; one worker process
    # (Celery: solo pool, prefetch 1) started afterwards takes them in order.
    t = compat.t
    path = tmp_path / "priority.log"
    queue = f"compat_priority_{uuid.uuid4().hex[:8]}"
    for tag, priority in [("p0", 0), ("p9", 9), ("p3", 3), ("p9b", 9), ("p5", 5)]:
        t.record.apply_async((str(path), tag), priority=priority, queue=queue)
    worker_factory(compat.mode, dict(compat.env, COMPAT_PREFETCH="1"), queue, processes=1)
    wait_for(lambda: len(lines(path)) == 5, what="five tasks")
    if differs(compat, "priority: higher runs first"):
        assert _tags(path) == ["p9", "p9b", "p5", "p3", "p0"]  # AMQP's order, as on RabbitMQ
    else:
        # Kombu's Redis transport: lower first, in steps of 0/3/6/9 (5 is a 6).
        assert _tags(path) == ["p0", "p3", "p5", "p9", "p9b"]


# -- canvas -------------------------------------------------------------------------------------------


def test_chain_group_chord(compat: Any) -> None:
    api, t = compat.api, compat.t
    assert api.chain(t.add.s(1, 2), t.add.s(10), t.add.s(100)).delay().get(timeout=30) == 113
    assert api.group(t.add.s(i, i) for i in range(4)).delay().get(timeout=30) == [0, 2, 4, 6]
    assert api.chord([t.add.s(i, i) for i in range(5)], t.tsum.s()).delay().get(timeout=30) == 20
    # Immutable signatures in a chain ignore the previous result.
    assert api.chain(t.add.s(1, 1), t.echo.si("fixed")).delay().get(timeout=30) == "fixed"


def test_chains_and_groups_in_chord_headers(compat: Any) -> None:
    """Issue 15: the same header canvases give the same values every way
    (an inner group in a header comes out reversed, as Celery's worker
    unrolls it: jobtable/shim/canvas_shapes.py)."""
    api, t = compat.api, compat.t
    header = [t.add.si(1, 1) | t.add.s(10), t.add.si(2, 2), t.add.si(3, 3) | t.add.s(1) | t.add.s(1)]
    assert api.chord(header, t.echo.s()).delay().get(timeout=30) == [12, 4, 8]
    nested = [t.add.si(1, 0), api.group(t.add.si(2, 0), t.add.si(3, 0), t.add.si(4, 0)), t.add.si(5, 0)]
    assert api.chord(nested, t.echo.s()).delay().get(timeout=30) == [1, 4, 3, 2, 5]
    chains = api.group(t.add.si(1, 1) | t.add.s(1), t.add.si(2, 2) | t.add.s(2))
    assert (chains | t.echo.s()).delay().get(timeout=30) == [3, 6]
    assert (t.add.si(1, 1) | api.group(t.add.s(1) | t.add.s(10), t.add.s(2)) | t.echo.s()).delay().get(timeout=30) == [13, 4]
    assert api.chord([api.chain(), t.add.si(1, 1)], t.echo.s()).delay().get(timeout=30) == [2]


# -- AsyncResult states ----------------------------------------------------------------------------


def test_asyncresult_states(compat: Any) -> None:
    api, t, states = compat.api, compat.t, compat.api.states
    assert api.app.AsyncResult(str(uuid.uuid4())).state == states.PENDING  # unknown id
    waiting = t.add.apply_async((1, 1), queue="compat_nobody_consumes")
    assert waiting.state == states.PENDING
    retrying = t.retry_later.delay()
    wait_for(lambda: retrying.state == states.RETRY, what="RETRY state")
    assert not retrying.ready()
    failed = t.fail.delay("x")
    with pytest.raises(ValueError):
        failed.get(timeout=30)
    assert failed.state == states.FAILURE
    ok = t.add.delay(1, 2)
    assert ok.get(timeout=30) == 3 and ok.state == states.SUCCESS


def test_every_difference_is_in_the_guide() -> None:
    """One place lists what differs from the reference: the migration
    guide's table names every difference these tests mark."""
    guide = (ROOT / "migration_guide" / "README.md").read_text()
    table = guide.split("## Differences from Celery on Redis", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    for difference in DIFFERENCES:
        assert any(difference in row for row in rows), difference
