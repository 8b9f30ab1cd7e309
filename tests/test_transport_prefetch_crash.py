"""A Celery worker killed while holding prefetched messages: only the
message it was running counts the crash (transport/started.py); the ones it
had only prefetched are not quarantined and run exactly once later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from jobtable.db import tables

from .dead_letter_support import results
from .test_transport_celery import ROOT, app, celery_env  # noqa: F401  (fixtures)
from .transport_helpers import rows, wait_for


def lines(record: Path, kind: str) -> list[list[str]]:
    text = record.read_text() if record.exists() else ""
    return [line.split()[1:] for line in text.splitlines() if line.split()[0] == kind]


def start_worker(env: dict[str, str], record: Path, pool: str, n: int, dies: bool = False) -> subprocess.Popen[Any]:
    """A Celery worker, once it is ready.  ``dies``: it runs a task that
    kills it, possibly before this process sees it alive."""
    ready = len(lines(record, "READY"))
    log = record.with_name(f"worker-{n}.log")
    # Its own process group: the kill takes the parent and its pool children.
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "worker", "-P", pool, "-c", "1",
         "-Q", "transport_tests", "-l", "warning", "-n", f"k{os.getpid()}-{n}@%h"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    wait_for(lambda: proc.poll() is not None or len(lines(record, "READY")) > ready, timeout=60, what="worker ready")
    if dies:
        assert len(lines(record, "READY")) > ready, log.read_text()  # it got as far as ready
    else:
        assert proc.poll() is None, log.read_text()
    return proc


def kill_group(proc: subprocess.Popen[Any]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def task_rows(db_url: str) -> list[Any]:
    return [r for r in rows(db_url) if r.queue == "transport_tests"]


def test_prefetched_messages_of_a_killed_worker_are_not_quarantined(
    db_url: str, celery_env: dict[str, str], app: object, tmp_path: Path  # noqa: F811
) -> None:
    mod: Any = app
    record = Path(celery_env["JT_RECORD"])
    env = dict(celery_env, JT_PREFETCH="4")
    long = mod.gated_late.delay("long", str(tmp_path / "never"))  # runs until killed
    innocent = [mod.note.delay(f"p{i}").id for i in range(3)]
    procs: list[subprocess.Popen[Any]] = []
    try:
        for kill in range(3):
            proc = start_worker(env, record, "prefork", kill)
            procs.append(proc)
            # The long task runs, the three others are prefetched behind it.
            wait_for(lambda: len(lines(record, "started")) == kill + 1, timeout=60, what="the long task started")
            held = wait_for(
                lambda: (lambda r: r if len(r) == 4 and all(x.state == tables.RUNNING for x in r) else None)(
                    task_rows(db_url)
                ),
                timeout=30,
                what=f"four messages held ({[(r.task_name, r.state, r.crashes) for r in task_rows(db_url)]})",
            )
            crashes = {r.task_id: r.crashes for r in held}
            assert crashes == {long.id: kill, **{t: 0 for t in innocent}}
            kill_group(proc)
        # A fourth worker recovers the third death: the long task is
        # quarantined, the prefetched ones run, once each.
        procs.append(start_worker(env, record, "prefork", 3))
        wait_for(lambda: len(lines(record, "note")) == 3, timeout=60, what="the prefetched tasks")
        wait_for(lambda: task_rows(db_url) == [], timeout=30, what="the acks")
        assert sorted(t[0] for t in lines(record, "note")) == ["p0", "p1", "p2"]
        assert len(lines(record, "started")) == 3  # never delivered again
        statuses = {r.task_id: r.status for r in results(db_url)}
        assert statuses.get(long.id) == tables.QUARANTINED
        assert not {t for t in innocent if t in statuses}  # ignore_result: no rows for them
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_group(proc)


def test_a_task_that_kills_its_celery_worker_is_still_quarantined(
    db_url: str, celery_env: dict[str, str], app: object  # noqa: F811
) -> None:
    mod: Any = app
    record = Path(celery_env["JT_RECORD"])
    env = dict(celery_env, JT_PREFETCH="4")
    poison = mod.die.delay("poison")
    innocent = mod.note.delay("after")
    procs: list[subprocess.Popen[Any]] = []
    try:
        for death in range(3):
            # Each worker starts the poison task (the ledger lists it) and dies
            # of it, the innocent message prefetched behind it.
            procs.append(start_worker(env, record, "solo", death, dies=True))
            procs[-1].wait(timeout=60)
            assert len(lines(record, "died")) == death + 1
            held = {r.task_id: (r.state, r.crashes) for r in task_rows(db_url)}
            assert held == {poison.id: (tables.RUNNING, death), innocent.id: (tables.RUNNING, 0)}
        procs.append(start_worker(env, record, "solo", 3))
        wait_for(lambda: lines(record, "note") == [["after"]], timeout=60, what="the innocent task")
        wait_for(lambda: task_rows(db_url) == [], timeout=30, what="the ack")
        assert len(lines(record, "died")) == 3
        (quarantined,) = [r for r in results(db_url) if r.task_id == poison.id]
        assert quarantined.status == tables.QUARANTINED and "3 times" in quarantined.error_message
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_group(proc)
