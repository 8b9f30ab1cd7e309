"""``jobtable purge`` and ``jobtable clear`` delete in batches, show progress
on a terminal only, and stay correct beside a running worker."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from jobtable import run_in_worker_many
from jobtable.db import purge as db_purge
from jobtable.db import claims_sql, clock, tables
from jobtable.db.engine import get_engine

from tests.conftest import ROOT
from tests.worker_jobs import Log, Noop, lines, requests, results, start_worker, stop, wait_for, worker_env


def _enqueue(n: int, **options: Any) -> None:
    assert all(run_in_worker_many([Noop() for _ in range(n)], **options))


def _old_results(n: int) -> None:
    ended = clock.utcnow() - timedelta(days=30)
    row = {"task_name": "x", "queue": "default", "status": tables.SUCCESSFUL, "ended_at": ended}
    rows = [dict(row, task_id=str(uuid.uuid4())) for _ in range(n)]
    with get_engine().begin() as conn:
        conn.execute(insert(tables.result), rows)


def _cli(env: dict[str, str], *args: str, stderr_tty: bool = False) -> tuple[int, str, str]:
    """Run ``jobtable ARGS``; stdout is a pipe, stderr a pipe or a terminal."""
    command = [sys.executable, "-m", "jobtable", *args]
    if not stderr_tty:
        done = subprocess.run(command, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait(timeout=60)
    return proc.returncode, out, b"".join(chunks).decode()


def test_purge_goes_by_id_ranges_and_keeps_what_changed_meanwhile(db_url: str) -> None:
    _enqueue(2100)
    _enqueue(300, queue="other")
    _enqueue(100, delay=3600)  # scheduled: purged too
    with get_engine().begin() as conn:
        plan = db_purge.plan_purge(conn, "default")
    assert plan.total == 2200
    # After the plan: one row claimed by a worker, and a new job enqueued.
    with get_engine().begin() as conn:
        (claimed,) = claims_sql.claim(conn, ["default"], 1, worker_id="native:w", now=clock.utcnow())
    _enqueue(1)
    batches = []
    after = 0
    while True:
        with get_engine().begin() as conn:
            count, last = db_purge.purge_batch(conn, plan, "default", after, 1000)
        if last is None:
            break
        assert last > after
        batches.append(count)
        after = last
    # Ranges of 1000 purgeable ids (the claimed row, no longer purgeable, is
    # inside the first range and left alone); the new job is past last_id.
    assert batches == [1000, 1000, 199]
    left = requests()
    assert sorted((r.queue, r.state) for r in left if r.queue == "default") == [
        ("default", tables.PENDING), ("default", tables.RUNNING)
    ]
    assert any(r.id == claimed.id and r.state == tables.RUNNING for r in left)
    assert max(r.id for r in left if r.state == tables.PENDING and r.queue == "default") > plan.last_id
    assert sum(r.queue == "other" for r in left) == 300


def test_piped_output_has_no_progress(db_url: str, subprocess_env: dict[str, str]) -> None:
    _enqueue(450)
    _old_results(250)
    code, out, err = _cli(subprocess_env, "purge", "-y", "--batch-size", "100")
    assert (code, out, err) == (0, "Deleted 450 job(s) from all queues.\n", "")
    code, out, err = _cli(subprocess_env, "clear", "--batch-size", "100")
    assert (code, out, err) == (0, "Deleted 250 result(s) older than 604800 seconds.\n", "")
    code, out, err = _cli(subprocess_env, "migrate")
    assert code == 0 and "schema is up to date" in out and err == ""
    assert requests() == [] and results() == []


def test_a_terminal_shows_progress_on_stderr_and_stdout_keeps_the_summary(
    db_url: str, subprocess_env: dict[str, str]
) -> None:
    _enqueue(450)
    _old_results(250)
    code, out, err = _cli(subprocess_env, "purge", "-y", "--batch-size", "100", stderr_tty=True)
    assert code == 0 and out == "Deleted 450 job(s) from all queues.\n"
    # One update per batch of 100: the bar moves through the batches.
    assert "Deleting jobs" in err and "400/450" in err and "450/450" in err
    code, out, err = _cli(subprocess_env, "clear", "--batch-size", "100", stderr_tty=True)
    assert code == 0 and out == "Deleted 250 result(s) older than 604800 seconds.\n"
    assert "Deleting results" in err and "250/250" in err
    code, out, err = _cli(subprocess_env, "migrate", stderr_tty=True)
    assert code == 0 and "Migrating" in err and "Done in" in err
    assert requests() == [] and results() == []


def test_migrate_on_a_terminal_shows_each_revision_as_it_is_applied(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    from jobtable.db.migrate import known_revisions

    env = dict(subprocess_env, JOBTABLE_DATABASE_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    (tmp_path / "new.sqlite3").touch()  # an empty database: every revision runs
    code, out, err = _cli(env, "migrate", stderr_tty=True)
    assert code == 0 and "migrated from empty" in out, (out, err)
    applied = [line.split()[1] for line in err.splitlines() if line.strip().startswith("applied ")]
    assert applied == sorted(known_revisions()) and len(applied) >= 6, err
    code, out, err = _cli(env, "migrate")  # piped: nothing but the summary
    assert code == 0 and "schema is up to date" in out and err == ""


def test_purge_beside_a_running_worker_loses_and_doubles_nothing(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    total = 3000
    log = tmp_path / "ran.log"
    # 5 ms each: the worker is still busy when the purge runs.
    assert all(run_in_worker_many([Log(str(log), str(i), sleep=0.005) for i in range(total)]))
    with get_engine().connect() as conn:
        all_ids = set(conn.execute(select(tables.request.c.task_id)).scalars())
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "2")
    try:
        wait_for(lambda: len(results()) >= 50, what="the worker running jobs")
        code, out, err = _cli(subprocess_env, "purge", "-y", "--batch-size", "200")
        assert code == 0, err
        purged = int(out.split()[1])
        # Every row the purge did not delete runs to its end.
        wait_for(lambda: requests() == [], what="the worker finishing what it held")
    finally:
        stop(proc)
    ran = [r.task_id for r in results()]
    assert len(ran) == len(set(ran))  # one result per job: nothing ran twice
    assert set(ran) <= all_ids
    assert all(r.status == tables.SUCCESSFUL for r in results())
    assert purged + len(ran) == total  # each job either ran or was purged
    assert 0 < purged < total
    assert len(lines(log)) == len(ran)  # what ran is what has a result


def test_clear_counts_match_what_it_deletes(db_url: str) -> None:
    _old_results(30)
    with get_engine().begin() as conn:
        first = select(func.min(tables.result.c.id)).scalar_subquery()
        conn.execute(update(tables.result).where(tables.result.c.id == first).values(ended_at=clock.utcnow()))
        assert db_purge.count_results_before(conn, clock.utcnow() - timedelta(days=7)) == 29
