"""Engines across fork(): a child gets a fresh engine, unless it adopts the
parent's (what a native pool member does): then it reuses the parent's
engine object -- dialect set up, schema checked -- on connections of its own,
and the parent's connections are left alone."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from sqlalchemy import text

from jobtable.db import engine as db_engine


def _in_child(adopt: bool) -> dict[str, Any]:
    """Fork; the child reports what it sees as JSON through a pipe."""
    parent_engine = db_engine.get_engine()
    with db_engine.connect() as conn:  # the parent holds a pooled connection
        conn.execute(text("SELECT 1"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            if adopt:
                db_engine.adopt_parent_engines()
            engine = db_engine.get_engine()
            checked = (os.getpid(), engine.url.render_as_string(hide_password=False)) in db_engine._checked
            with db_engine.connect(engine) as conn:
                value = conn.execute(text("SELECT 41 + 1")).scalar()
            report = {"same": engine is parent_engine, "checked": checked, "value": value}
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's pool still works after the child used (or dropped) it.
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    return json.loads(data)


def test_a_forked_child_gets_a_fresh_engine_by_default(db_url: str) -> None:
    db_engine.check_schema(db_engine.get_engine())
    seen = _in_child(adopt=False)
    assert seen == {"same": False, "checked": False, "value": 42}  # it checks again on its first connect


def test_a_child_that_adopts_reuses_the_parents_engine_and_schema_check(db_url: str) -> None:
    db_engine.check_schema(db_engine.get_engine())
    seen = _in_child(adopt=True)
    assert seen == {"same": True, "checked": True, "value": 42}


@pytest.mark.dialects("postgresql")
def test_a_member_s_first_claim_uses_the_claim_its_supervisor_compiled(db_url: str) -> None:
    """worker.main._warm_for_members compiles the claim before fork (a claim
    of 0 rows): a member's first claim -- every replacement's -- is then a
    compiled-cache hit, not a build and compile (~3 ms of its CPU)."""
    from sqlalchemy import event

    from jobtable.db import claims_sql, clock
    from jobtable.db.dialects import postgresql as pg_dialect
    from jobtable.worker import main as worker_main

    engine = db_engine.get_engine()
    db_engine.check_schema(engine)
    pg_dialect._PG_CLAIM.clear()  # what earlier tests of this process compiled
    engine.clear_compiled_cache()
    worker_main._warm_for_members(engine, ["warm-q"])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            db_engine.adopt_parent_engines()
            hits: list[str] = []
            with db_engine.connect(engine) as conn:
                event.listen(conn, "after_cursor_execute",
                             lambda *args: hits.append(str(args[4].cache_hit is args[4].dialect.CACHE_HIT)))
                claims_sql.claim(conn, ["warm-q"], 5, worker_id="child", now=clock.utcnow())
            os.write(write, json.dumps(hits).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        hits = json.loads(f.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert hits == ["True"]
