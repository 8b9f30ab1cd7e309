"""Revokes that last (db/revokes_sql.py): recorded in jobtable_revoke and
checked at every claim, so a worker started after the revoke never runs the
task, which reads REVOKED (SQLite and PostgreSQL, real worker processes)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, text, update

from jobtable.db import claims_sql, clock, revokes_sql, tables
from jobtable.db import engine as db_engine
from jobtable.shim import AsyncResult, TaskRevokedError, states
from tests import shim_tasks as t
from tests.shim_support import run_burst
from tests.worker_jobs import lines, requests, results


def _revoke(*entries: tuple[str, str, Any], expires: float | None = None, now: Any = None) -> int:
    with db_engine.get_engine().begin() as conn:
        return revokes_sql.add(conn, entries, now or clock.utcnow(), expires)


def test_revoked_before_a_worker_exists_never_runs(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    kept = t.record.delay(log, "kept")
    gone = t.record.delay(log, "gone")
    assert kept is not None and gone is not None
    # The shim's revoke records it (its pending request is cancelled too).
    AsyncResult(gone.id).revoke()
    # A task id revoked before it is even sent is caught at claim, as Celery's.
    _revoke((revokes_sql.TASK, "", "later-id"))
    later = t.record.apply_async((log, "later"), task_id="later-id")
    assert later is not None
    run_burst(subprocess_env)  # a worker that never heard any broadcast
    assert lines(log) == ["kept"]
    assert requests() == []
    for task_id in (gone.id, "later-id"):
        result = AsyncResult(task_id)
        assert result.state == states.REVOKED
        assert isinstance(result.result, TaskRevokedError)
    [row] = results("later-id")
    assert row.status == tables.CANCELLED and row.error_type == revokes_sql.REVOKED_ERROR
    assert row.started_at is None


def test_a_revoke_expires(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    sent = t.record.apply_async((log, "ran"), task_id="old-revoke")
    assert sent is not None
    # Revoked 4 hours ago: past Celery's REVOKE_EXPIRES (3 hours).
    assert revokes_sql.REVOKE_EXPIRES == 10800
    _revoke((revokes_sql.TASK, "", "old-revoke"), now=clock.utcnow() - timedelta(hours=4))
    run_burst(subprocess_env)
    assert lines(log) == ["ran"]
    assert AsyncResult("old-revoke").get(timeout=10) == "ran"


def test_revoke_again_restarts_its_expiry(db_url: str) -> None:
    now = clock.utcnow()
    _revoke((revokes_sql.TASK, "", "x"), now=now - timedelta(hours=2))
    _revoke((revokes_sql.TASK, "", "x"), now=now)
    with db_engine.get_engine().connect() as conn:
        [row] = revokes_sql.listed(conn, now)
    assert row.value == "x" and row.expires_at >= now + timedelta(seconds=10799)


def _stamp(task_id: str, stamps: dict[str, Any]) -> None:
    """Give a stored message Celery's stamp headers (as canvas stamping sends them)."""
    req = tables.request
    with db_engine.get_engine().begin() as conn:
        message = json.loads(conn.execute(select(req.c.message).where(req.c.task_id == task_id)).scalar_one())
        message["headers"].update(stamped_headers=list(stamps), stamps=stamps)
        conn.execute(update(req).where(req.c.task_id == task_id).values(message=json.dumps(message)))


def test_stamped_header_revoke(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    ids = {}
    for tag, stamps in [
        ("one", {"flow": "f-1"}),
        ("list", {"flow": ["f-0", "f-2"], "other": "z"}),
        ("free", {"flow": "f-3"}),
        ("plain", None),
    ]:
        sent = t.record.delay(log, tag)
        assert sent is not None
        ids[tag] = sent.id
        if stamps:
            _stamp(sent.id, stamps)
    # A stamp value matches by header name too: "other=f-1" revokes nothing.
    _revoke((revokes_sql.STAMP, "flow", "f-1"), (revokes_sql.STAMP, "flow", "f-2"), (revokes_sql.STAMP, "other", "f-3"))
    run_burst(subprocess_env)
    assert sorted(lines(log)) == ["free", "plain"]
    assert AsyncResult(ids["one"]).state == states.REVOKED
    assert AsyncResult(ids["list"]).state == states.REVOKED


def test_unusable_ids_are_skipped_not_errors(db_url: str) -> None:
    longest = "i" * 255
    assert _revoke((revokes_sql.TASK, "", longest)) == 1
    assert _revoke((revokes_sql.TASK, "", "i" * 256), (revokes_sql.TASK, "", "a\x00b")) == 0
    assert _revoke((revokes_sql.TASK, "", "\ud800"), (revokes_sql.TASK, "", None), (revokes_sql.TASK, "", "")) == 0
    assert _revoke((revokes_sql.STAMP, "n" * 300, "v"), (revokes_sql.STAMP, "h", {"not": "text"})) == 0
    with db_engine.get_engine().connect() as conn:
        assert [row.value for row in revokes_sql.listed(conn, clock.utcnow())] == [longest]


def _claim_statements(conn: Any) -> tuple[list[Any], list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith(("BEGIN", "COMMIT")):
            seen.append(statement)

    event.listen(conn, "before_cursor_execute", record)
    try:
        with conn.begin():
            rows = claims_sql.claim(conn, ["celery"], 100, worker_id="native:test", now=clock.utcnow())
    finally:
        event.remove(conn, "before_cursor_execute", record)
    return rows, seen


def test_claim_cost_with_10000_revokes(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The claim ends revoked rows itself here: importing the shim hands its
    # tasks' revoked rows to its runner instead (task_revoked), not measured.
    monkeypatch.setattr(revokes_sql, "runner_revokes", {})
    engine = db_engine.get_engine()
    for i in range(5):
        t.add.delay(i, i)
    with engine.connect() as conn:
        rows, empty_table = _claim_statements(conn)
    assert len(rows) == 5
    # The check is one statement per claimed batch, none for an empty claim.
    assert len(empty_table) == 2 and "jobtable_revoke" in empty_table[1]
    with engine.connect() as conn:
        _, nothing_claimed = _claim_statements(conn)
    assert len(nothing_claimed) == 1

    _revoke(*((revokes_sql.TASK, "", f"revoked-{i}") for i in range(10_000)))
    _revoke(*((revokes_sql.STAMP, "flow", f"s-{i}") for i in range(100)))
    sent = [t.add.delay(i, i) for i in range(5)]
    _revoke((revokes_sql.TASK, "", sent[0].id))  # type: ignore[union-attr]
    with engine.connect() as conn:
        rows, full_table = _claim_statements(conn)
    assert len(rows) == 4
    # Same statements (plus the revoked row's result and delete), and the
    # check probes the key's index rather than reading the table.
    assert full_table[:2] == empty_table and len(full_table) == 4
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE jobtable_revoke"))
            plan = " ".join(
                row[0]
                for row in conn.execute(
                    text(
                        "EXPLAIN SELECT value, kind, name FROM jobtable_revoke "
                        "WHERE value = ANY(ARRAY['a', 'b']::varchar[])"
                    )
                )
            )
            assert "Index" in plan and "Seq Scan" not in plan, plan
        else:
            plan = " ".join(
                str(row[-1])
                for row in conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT value, kind, name FROM jobtable_revoke "
                        "WHERE value IN ('a', 'b')"
                    )
                )
            )
            assert plan.startswith("SEARCH jobtable_revoke USING"), plan


def test_dashboard_revokes_and_unrevokes(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    from tests.dashboard_client import client

    log = str(tmp_path / "ran.log")
    held = t.record.delay(log, "held")
    dropped = t.record.delay(log, "dropped")
    assert held is not None and dropped is not None
    # As a Celery broadcast records it: the request stays, the revoke holds it.
    _revoke((revokes_sql.TASK, "", held.id))
    [held_row] = [r for r in requests() if r.task_id == held.id]
    [dropped_row] = [r for r in requests() if r.task_id == dropped.id]
    with client() as dash:
        page = dash.get(f"/requests/{held_row.id}").text
        assert "Un-revoke" in page
        assert "Un-revoke" not in dash.get(f"/requests/{dropped_row.id}").text
        assert dash.act("revoke", [dropped_row.id], next="/requests").status_code == 303
        assert dash.act("unrevoke", [held.id], next="/requests").status_code == 303
        skipped = dash.act("unrevoke", ["never-revoked"])
        assert "not revoked" in skipped.text
    run_burst(subprocess_env)
    assert lines(log) == ["held"]
    assert AsyncResult(held.id).get(timeout=10) == "held"
    assert AsyncResult(dropped.id).state == states.REVOKED
    with db_engine.get_engine().connect() as conn:
        assert [r.value for r in revokes_sql.listed(conn, clock.utcnow())] == [dropped.id]


def test_each_runner_that_records_revokes_gets_its_own_rows(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker running a Celery app's tasks and shim tasks has two runners
    that record revokes themselves (task_revoked, chord parts): installing
    the second must not take the first one's rows away (it used to replace
    the hook, and shim tasks were ended in the claim, without their signal)."""
    monkeypatch.setattr(revokes_sql, "runner_revokes", {})
    monkeypatch.setattr(revokes_sql, "flagged", set())
    revokes_sql.runner_revokes["shim"] = lambda row: row.task_name == t.add.name
    revokes_sql.runner_revokes["celery"] = lambda row: row.task_name == t.total.name
    revokes_sql.runner_revokes["celery"] = lambda row: row.task_name == t.total.name  # installed twice: once
    sent = [t.add.delay(1, 2), t.total.delay([2, 3]), t.add.delay(3, 4)]
    # As a Celery broadcast records them: the requests stay, the revokes hold them.
    _revoke(*((revokes_sql.TASK, "", result.id) for result in sent[:2]))  # type: ignore[union-attr]
    engine = db_engine.get_engine()
    with engine.connect() as conn, conn.begin():
        claimed = claims_sql.claim(conn, ["celery"], 100, worker_id="native:test", now=clock.utcnow())
    # Both revoked rows reach their runners flagged; the third is not revoked.
    assert sorted(row.task_id for row in claimed) == sorted(r.id for r in sent)  # type: ignore[union-attr]
    assert revokes_sql.flagged == {sent[0].id, sent[1].id}  # type: ignore[union-attr]
