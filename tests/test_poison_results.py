"""Poison results: a job whose outcome is hostile to a result row runs once,
gets exactly one clear result, and neither the worker nor its neighbours
notice.  Real worker subprocesses on PostgreSQL and SQLite, both pools."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError

from jobtable import run_in_worker_many, safetext
from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, finish_sql, refusals, tables
from tests import poison_result_jobs as pj
from tests.conftest import ROOT
from tests.polling import terminate
from tests.worker_jobs import Log, lines, requests, results, wait_for, worker_env

NOTE = "[jobtable: the return value was not stored as JSON: "


@pytest.fixture(params=["processes", "threads"])
def pool(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    """A worker of the poison jobs; its log goes to ``out`` (a pipe nobody
    reads could fill up and stall it)."""
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.poison_result_jobs",
             "worker", *args],
            env=worker_env(env), cwd=str(ROOT), stdout=sink, stderr=subprocess.STDOUT,
        )


def assert_storable(row: Any) -> None:
    for column in ("error_type", "error_message", "traceback", "return_value"):
        value = getattr(row, column)
        if value is not None:
            assert "\x00" not in value, column
            value.encode("utf-8")  # no lone surrogates


def returned(row: Any) -> Any:
    assert row.status == tables.SUCCESSFUL, (row.status, row.error_message)
    return json.loads(row.return_value)


def check_poison_row(kind: type, row: Any) -> None:
    """What each kind of poison must look like once recorded."""
    assert_storable(row)
    name = kind.__name__
    if name == "RaiseStrRaises":
        assert row.status == tables.ERRORED
        assert row.error_type == "tests.poison_result_jobs.StrRaises"
        assert row.error_message == "<unprintable tests.poison_result_jobs.StrRaises: str() raised TypeError>"
        assert "StrRaises" in row.traceback and "in end" in row.traceback
    elif name == "ReturnReprRaises":
        value = returned(row)
        assert value.startswith(NOTE) and "<unprintable tests.poison_result_jobs.ReprRaises: repr() raised ValueError>" in value
    elif name == "ReturnDeep":
        value = returned(row)
        assert value.startswith(NOTE + "it is nested deeper than 100 levels") and "[[[[" in value
    elif name == "ReturnCycle":
        value = returned(row)
        assert value.startswith(NOTE + "it contains a reference cycle") and "'cycle'" in value
    elif name == "RaiseNul":
        assert (row.status, row.error_type, row.error_message) == (tables.ERRORED, "ValueError", "before\\x00after")
        assert "before\\x00after" in row.traceback
    elif name == "RaiseSurrogate":
        assert (row.status, row.error_message) == (tables.ERRORED, "lone \\ud800 surrogate")
    elif name == "ReturnNulAndSurrogate":
        # JSON escapes both: the value reads back exactly.
        assert returned(row) == {"text": "nul\x00 and lone \udcff", "key\x00": 1}
    elif name == "RaiseHuge":
        assert row.status == tables.ERRORED
        assert len(row.error_message) <= safetext.MESSAGE_LIMIT
        assert row.error_message.startswith("xxxx")
        assert row.error_message.endswith(f"[truncated by jobtable: {pj.HUGE:,} characters in all]")
        assert len(row.traceback) <= safetext.TRACEBACK_LIMIT and "truncated by jobtable" in row.traceback
        assert "in end" in row.traceback  # the start of the traceback is kept
    elif name == "ReturnHuge":
        value = returned(row)
        assert value.startswith(NOTE) and "10,485,760-byte limit" in value
        assert len(row.return_value) < 100_000
    elif name == "RaiseNotesRaise":
        assert (row.status, row.error_message) == (tables.ERRORED, "notes")
        assert "the standard traceback formatter raised RuntimeError" in row.traceback
        assert "in end" in row.traceback
    elif name == "RaiseLongName":
        assert row.status == tables.ERRORED and row.error_message == "long name"
        assert row.error_type.startswith("tests.poison_result_jobs.LLLL") and len(row.error_type) <= 255
        assert "truncated by jobtable" in row.error_type
    elif name == "RaiseLongChain":
        assert (row.status, row.error_message) == (tables.ERRORED, "link 9999")
        assert "chained exceptions (__cause__/__context__) not shown" in row.traceback
        assert "link 9998" not in row.traceback
    else:  # pragma: no cover - a kind added without its check
        raise AssertionError(f"no check for {name}")


def test_poison_jobs_run_once_with_one_clear_result(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    runs = str(tmp_path / "runs.log")
    jobs: list[Any] = []
    kinds: dict[str, type] = {}
    for index, kind in enumerate(pj.POISON):
        # Good jobs on both sides: they share the poison's claimed batch.
        jobs.append(Log(runs, f"good-{index}-a"))
        tag = f"poison-{kind.__name__}"
        kinds[tag] = kind
        jobs.append(kind(runs, tag))
        jobs.append(Log(runs, f"good-{index}-b"))
    enqueued = run_in_worker_many(jobs)
    assert len(enqueued) == len(jobs)
    tag_of = {request.uuid: job.tag for request, job in zip(enqueued, jobs)}

    proc = start(subprocess_env, tmp_path / "worker.log", "--pool", pool, "--max-processes", "2")
    try:
        wait_for(lambda: len(results()) >= len(jobs) or proc.poll() is not None, timeout=120, what="all results")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text(errors="replace")[-5000:]
        # Still consuming: a job enqueued now runs too.
        late = Log(runs, "late").run_in_worker()
        assert late is not None
        wait_for(lambda: results(late.uuid), what="the late job")
        assert proc.poll() is None
    finally:
        terminate(proc)

    rows = results()
    assert len(rows) == len(jobs) + 1 and requests() == []
    by_tag: dict[str, list[Any]] = {}
    for row in rows:
        by_tag.setdefault(tag_of.get(row.task_id, "late"), []).append(row)
    ran = Counter(lines(runs))
    for tag, found in by_tag.items():
        assert ran[tag] == 1, f"{tag} ran {ran[tag]} times"
        assert len(found) == 1, f"{tag} has {len(found)} results"
        if tag in kinds:
            check_poison_row(kinds[tag], found[0])
        else:
            assert found[0].status == tables.SUCCESSFUL and json.loads(found[0].return_value) == tag
    assert set(ran) == set(by_tag)


def test_a_forked_member_keeps_its_inherited_heap_out_of_full_collections(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The heap a member inherits from its supervisor is frozen (gc.freeze):
    a job allocating many containers no longer walks it in full collections
    (a 10,000-deep return value cost ~2-3 ms of collection per job); and it
    holds sqlalchemy.orm already (imported once, before fork)."""
    job = pj.HeapFrozen().run_in_worker()
    assert job is not None
    proc = start(subprocess_env, tmp_path / "worker.log", "--max-processes", "1")
    try:
        wait_for(lambda: results(job.uuid) or proc.poll() is not None, timeout=60, what="the result")
    finally:
        terminate(proc)
    (row,) = results(job.uuid)
    frozen, orm = returned(row)
    # The supervisor's imports (SQLAlchemy, the driver, jobtable): tens of thousands.
    assert frozen > 10_000
    # Preloaded by the supervisor: params imports it on the first value it
    # cannot encode natively, ~70 ms in each member otherwise.
    assert orm is True


# -- rows the database refuses ----------------------------------------------------------

PG_TRIGGER = [
    """CREATE FUNCTION jobtable_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF strpos(NEW.error_message, 'refuse-me') > 0 OR strpos(NEW.task_name, 'RefuseEverything') > 0 THEN
            RAISE EXCEPTION 'refused by the test, secret-detail' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER jobtable_test_refuse BEFORE INSERT OR UPDATE ON jobtable_result "
    "FOR EACH ROW EXECUTE FUNCTION jobtable_test_refuse()",
]
PG_DROP = ["DROP TRIGGER IF EXISTS jobtable_test_refuse ON jobtable_result",
           "DROP FUNCTION IF EXISTS jobtable_test_refuse()"]
SQLITE_TRIGGER = [
    "CREATE TRIGGER jobtable_test_refuse BEFORE INSERT ON jobtable_result "
    "WHEN NEW.error_message LIKE '%refuse-me%' OR NEW.task_name LIKE '%RefuseEverything' "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test, secret-detail'); END",
    "CREATE TRIGGER jobtable_test_refuse_update BEFORE UPDATE ON jobtable_result "
    "WHEN NEW.error_message LIKE '%refuse-me%' OR NEW.task_name LIKE '%RefuseEverything' "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test, secret-detail'); END",
]
SQLITE_DROP = ["DROP TRIGGER IF EXISTS jobtable_test_refuse", "DROP TRIGGER IF EXISTS jobtable_test_refuse_update"]


@pytest.fixture
def refusing_trigger(db_url: str, dialect: str) -> Iterator[None]:
    """A trigger that refuses some result rows: a database that says no to
    data for a reason no sanitizing can foresee (a check a user added)."""
    create, drop = (PG_TRIGGER, PG_DROP) if dialect == "postgresql" else (SQLITE_TRIGGER, SQLITE_DROP)
    engine = db_engine.get_engine(db_url)
    with engine.begin() as conn:
        for sql in create:
            conn.exec_driver_sql(sql)
    try:
        yield
    finally:
        with engine.begin() as conn:
            for sql in drop:
                conn.exec_driver_sql(sql)


def refusal_words(dialect: str) -> list[str]:
    return ["IntegrityError", "SQLSTATE 23514"] if dialect == "postgresql" else ["IntegrityError", "SQLITE_CONSTRAINT"]


def test_a_refused_row_is_written_alone_and_the_batch_goes_on(
    db_url: str, dialect: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str, refusing_trigger: None
) -> None:
    runs = str(tmp_path / "runs.log")
    jobs: list[Any] = [Log(runs, f"good-{i}") for i in range(10)]
    jobs[3:3] = [pj.RaiseRefuseMe(runs, "refuse-me")]
    jobs[7:7] = [pj.RefuseEverything(runs, "refuse-everything")]
    enqueued = run_in_worker_many(jobs)
    tag_of = {request.uuid: job.tag for request, job in zip(enqueued, jobs)}
    log = tmp_path / "worker.log"
    proc = start(subprocess_env, log, "--pool", pool, "--max-processes", "1")
    try:
        # Every request row leaves the table (the refused one without a result).
        wait_for(lambda: not requests() or proc.poll() is not None, timeout=60, what="the queue to drain")
        assert proc.poll() is None, log.read_text(errors="replace")[-5000:]
        late = Log(runs, "late").run_in_worker()
        assert late is not None
        wait_for(lambda: results(late.uuid), what="the late job")
    finally:
        terminate(proc)

    ran = Counter(lines(runs))
    assert all(count == 1 for count in ran.values()) and len(ran) == len(jobs) + 1, ran
    rows = {tag_of.get(row.task_id, "late"): row for row in results()}
    assert len(rows) == len(results()) == len(jobs)  # all but refuse-everything, plus late
    assert "refuse-everything" not in rows
    for tag, row in rows.items():
        if tag == "refuse-me":
            continue
        assert row.status == tables.SUCCESSFUL and json.loads(row.return_value) == tag
    note = rows["refuse-me"]
    assert note.status == tables.ERRORED and note.error_type == refusals.REFUSED_TYPE
    assert note.error_message.startswith("The database refused to store this attempt's result (")
    for word in refusal_words(dialect):
        assert word in note.error_message
    # Why, but nothing of the statement, its values or the server's text.
    for leak in ("INSERT", "secret-detail", "refuse-me", "jobtable_result"):
        assert leak not in note.error_message
    output = log.read_text(errors="replace")
    assert "writing them one by one" in output and "refused even the note" in output


# -- the write path itself, without a worker ---------------------------------------------------


def claim_all(conn: Any, worker_id: str) -> list[Any]:
    return claims_sql.claim(conn, ["default"], 100, worker_id=worker_id, now=clock.utcnow())


def outcome(row: Any, status: str, **fields: Any) -> finish_sql.Outcome:
    return finish_sql.Outcome(row, status, clock.utcnow(), {"started_at": clock.utcnow(), **fields})


def test_finish_each_writes_neighbours_and_a_note(db_url: str, dialect: str, tmp_path: Path) -> None:
    """The raw write of a value the sanitizer would have fixed: the database
    (PostgreSQL: NUL; SQLite: a lone surrogate the driver cannot encode)
    refuses the batch, and ``finish_each`` writes it row by row."""
    runs = str(tmp_path / "runs.log")
    run_in_worker_many([Log(runs, str(i)) for i in range(3)])
    bad_text = "nul\x00" if dialect == "postgresql" else "surrogate\ud800"
    worker = "native:test-finish-each"
    engine = db_engine.get_engine(db_url)
    with engine.begin() as conn:
        claimed = claim_all(conn, worker)
    assert len(claimed) == 3
    outcomes = [
        outcome(claimed[0], tables.SUCCESSFUL, return_value='"ok"'),
        outcome(claimed[1], tables.ERRORED, error_type="ValueError", error_message=bad_text),
        outcome(claimed[2], tables.SUCCESSFUL, return_value='"ok too"'),
    ]
    # PostgreSQL refuses the NUL (DataError, SQLSTATE 22); SQLite's driver
    # cannot encode the surrogate.
    refused_type = DataError if dialect == "postgresql" else UnicodeEncodeError
    with pytest.raises(refused_type, match="0x00|surrogates not allowed") as refused, engine.begin() as conn:
        finish_sql.finish(conn, worker, outcomes, clock.utcnow())
    assert refusals.is_refusal(refused.value), repr(refused.value)
    assert results() == [] and len(requests()) == 3  # rolled back whole

    with engine.begin() as conn:
        refusals.finish_each(conn, worker, outcomes, clock.utcnow())
    rows = {row.task_id: row for row in results()}
    assert requests() == [] and len(rows) == 3
    assert rows[claimed[0].task_id].return_value == '"ok"'
    assert rows[claimed[2].task_id].return_value == '"ok too"'
    note = rows[claimed[1].task_id]
    assert (note.status, note.error_type) == (tables.ERRORED, refusals.REFUSED_TYPE)
    assert bad_text not in note.error_message and "attempt ended ERRORED" in note.error_message

    # A success whose row is refused becomes ERRORED (its value is lost).
    noted = refusals.refused_outcome(outcomes[0], "DataError")
    assert noted.status == tables.ERRORED and "ran and returned" in noted.fields["error_message"]


def test_a_lost_connection_is_not_a_refusal(pg_url: str) -> None:
    """The retry-as-before path: the server ends the session mid-transaction."""
    engine = db_engine.create_jobtable_engine(pg_url)
    try:
        with engine.connect() as victim:
            pid = victim.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                admin.commit()
            with pytest.raises(OperationalError, match="terminat|closed|lost") as lost:
                victim.exec_driver_sql("SELECT 1")
        assert not refusals.is_refusal(lost.value), repr(lost.value)
    finally:
        engine.dispose()


# -- Celery -P solo with the jobtable broker and result backend --------------------------------


def test_celery_solo_worker_survives_poison_results(
    db_url: str, dialect: str, subprocess_env: dict[str, str], tmp_path: Path, refusing_trigger: None
) -> None:
    import importlib
    import os

    from kombu import pools

    previous = os.environ.get("JOBTABLE_DATABASE_URL")
    os.environ["JOBTABLE_DATABASE_URL"] = db_url  # read by the app module at import
    from tests import celery_backend_app

    module = importlib.reload(celery_backend_app)
    pools.reset()
    log = tmp_path / "celery.log"
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_backend_app", "worker", "-P", "solo",
             "-l", "warning", "-n", f"poison-{dialect}-{os.getpid()}@%h"],
            env=subprocess_env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        assert module.add.delay(1, 1).get(timeout=60) == 2
        kinds = ["nul-error", "surrogate-error", "huge-error", "refuse-me", "nul-return"]
        sent = {kind: module.poison.delay(kind) for kind in kinds}
        for kind, handle in sent.items():
            wait_for(lambda: handle.ready() or worker.poll() is not None, timeout=60, what=kind)
            assert worker.poll() is None, log.read_text(errors="replace")[-5000:]
        assert sent["nul-return"].get(timeout=10) == "nul\x00 return"
        with pytest.raises(ValueError, match="before\\\\x00after"):
            sent["nul-error"].get(timeout=10)
        assert sent["huge-error"].state == "FAILURE"
        assert sent["refuse-me"].state == "FAILURE"
        # The worker goes on.
        assert module.add.delay(2, 3).get(timeout=60) == 5 and worker.poll() is None
    finally:
        terminate(worker, timeout=20)
        pools.reset()
        if previous is None:
            os.environ.pop("JOBTABLE_DATABASE_URL", None)
        else:
            os.environ["JOBTABLE_DATABASE_URL"] = previous
    rows = {row.task_id: row for row in results()}
    for kind, handle in sent.items():
        row = rows[handle.id]
        assert_storable(row)
    note = rows[sent["refuse-me"].id]
    assert note.error_type == refusals.REFUSED_TYPE and "secret-detail" not in note.error_message
