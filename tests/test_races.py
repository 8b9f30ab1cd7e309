"""Concurrency keys and should_enqueue() hold when many processes race.

Every process waits at a barrier, then enqueues the same key at once.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
from sqlalchemy import func, select

import jobtable
from jobtable.db import tables
from jobtable.db.engine import get_engine
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

PROCESSES = 8
ROUNDS = 5


def _enqueue(url: str, kind: str, key: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    try:
        from jobtable import settings
        from tests.sample_jobs import AtMostTwo, Keyed

        settings.reset()
        jobtable.configure(database_url=url)
        job = Keyed(key) if kind == "key" else AtMostTwo(key)
        # Warm up (schema check, connection) so the race is the insert itself.
        from jobtable.db.engine import check_schema

        check_schema(get_engine())
        barrier.wait(timeout=60)
        request = job.run_in_worker()
        out.put(("ok", request.uuid if request else None))
    except BaseException as exc:  # report, don't hang the parent
        out.put(("error", repr(exc)))


def _race(url: str, kind: str, key: str) -> list[str | None]:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [ctx.Process(target=_enqueue, args=(url, kind, key, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r for status, r in results if status == "error"]
    assert not errors, errors
    return [r for _status, r in results]


def _count(key: str) -> int:
    stmt = select(func.count()).select_from(tables.request).where(tables.request.c.concurrency_key == key)
    stmt_any = select(func.count()).select_from(tables.request)
    with get_engine().connect() as conn:
        return int(conn.execute(stmt if key else stmt_any).scalar_one())


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_same_key_from_many_processes_gives_one_row(db_url: str, round_: int) -> None:
    key = f"race-{round_}-{os.getpid()}"
    uuids = _race(db_url, "key", key)
    assert sum(u is not None for u in uuids) == 1
    assert _count(key) == 1


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_should_enqueue_is_atomic_with_the_insert(db_url: str, round_: int) -> None:
    # AtMostTwo allows two waiting jobs; without the lock, several processes
    # would all count 0 or 1 and insert.
    uuids = _race(db_url, "limit", f"limit-{round_}")
    assert sum(u is not None for u in uuids) == 2
    assert _count("") == 2
