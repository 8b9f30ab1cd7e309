"""Poison on the Kombu transport: a Celery worker meets undecodable rows and
stays up; a message whose consumers keep dying while holding it is quarantined."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from jobtable.db import tables

from .dead_letter_support import assert_one_dead_letter_each, insert_all_bad, requests, results
from .test_transport_celery import Worker, app, celery_env  # noqa: F401  (fixtures)
from .transport_helpers import FAST_OPTIONS, connect, rows, wait_for


def test_celery_worker_started_with_bad_rows_runs_the_good_tasks_and_stays_up(
    db_url: str, celery_env: dict[str, str], app: object  # noqa: F811
) -> None:
    mod: object = app
    bad = insert_all_bad(db_url, "transport_tests")
    for i in range(3):
        mod.note.delay(f"good-{i}")  # type: ignore[attr-defined]
    worker = Worker(celery_env, Path(celery_env["JT_RECORD"]), "solo")
    try:
        wait_for(lambda: len(worker.lines("note")) == 3, timeout=30, what="the good tasks")
        assert sorted(t[0] for t in worker.lines("note")) == ["good-0", "good-1", "good-2"]
        # Still consuming after the bad rows: a task sent now runs too.
        mod.note.delay("later")  # type: ignore[attr-defined]
        wait_for(lambda: ["later"] in worker.lines("note"), timeout=30, what="a later task")
        assert worker.proc.poll() is None
        wait_for(
            lambda: not [r for r in requests(db_url) if r.queue == "transport_tests"], timeout=10, what="acks written"
        )
        assert_one_dead_letter_each(db_url, bad)
    finally:
        worker.stop()
    assert "Unrecoverable error" not in worker.log.read_text()


def test_requeue_and_reject_do_not_count_as_crashes(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("requeued")
        queue.put({"x": 1})
        for _ in range(3):
            queue.get(timeout=5).requeue()
        (row,) = rows(db_url)
        assert (row.deliveries, row.crashes) == (3, 0)
        queue.get(timeout=5).ack()
        queue.close()


def test_a_message_whose_consumer_is_killed_n_times_is_quarantined(
    db_url: str, subprocess_env: dict[str, str], python: str
) -> None:
    assert int(os.environ.get("JOBTABLE_WORKER_QUARANTINE_AFTER", "3")) == 3
    with connect(db_url) as conn:
        simple = conn.SimpleQueue("crashy")
        simple.put({"poison": True})
        (poison_row,) = rows(db_url)
        for kill in range(3):
            child = subprocess.Popen(
                [python, "-m", "tests.transport_consumer", db_url, "crashy", "1"],
                env=subprocess_env,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                assert child.stdout.readline().strip() == "HELD 1"
                held = [r for r in rows(db_url) if r.state == tables.RUNNING]
                assert [(r.id, r.crashes) for r in held] == [(poison_row.id, kill)]
                os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=10)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            # Any live consumer recovers the lapsed lease (counting the
            # crash); for the first two deaths that is the next child.
        # The third death: the next recovery quarantines instead of redelivering.
        keeper = conn.transport._keeper
        wait_for(
            lambda: keeper.recover() is not None and any(r.status == tables.QUARANTINED for r in results(db_url)),
            timeout=5 + 2 * FAST_OPTIONS["lease_seconds"],
            what="quarantine",
        )
        (quarantined,) = results(db_url)
        assert quarantined.status == tables.QUARANTINED
        assert quarantined.task_id == poison_row.task_id and quarantined.message == poison_row.message
        assert "died" in quarantined.error_message and "3 times" in quarantined.error_message
        # The queue goes on: the poison message is never delivered again.
        simple.put({"innocent": True})
        got = simple.get(timeout=5)
        assert got.payload == {"innocent": True}
        got.ack()
        simple.close()
    wait_for(lambda: rows(db_url) == [], timeout=5, what="the ack")
    assert [r.status for r in results(db_url)] == [tables.QUARANTINED]
