""""Running" means running for a Celery worker on the jobtable transport
(issue 16): with prefetch > 1 and one slow task running, exactly that task
is shown running and the prefetched ones claimed -- by `jobtable requests
--state`, `jobtable stats`, the Job API's reads, and the dashboard's
Workers and Processes pages.  The worker's processes record the deliveries
they start (transport/started.py); its consumer's lease thread marks those
rows started in one UPDATE per half second (LeaseKeeper.report_started).

With early ack (Celery's default) a task's row leaves the table as the task
starts: nothing of it is shown, and its prefetched neighbours are claimed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobtable import JobProcess, JobRequest
from jobtable.cli import main
from jobtable.db import tables

from tests.conftest import ALL_DIALECTS
from .dashboard_client import client
from .polling import terminate
from .test_transport_celery import ROOT, app, celery_env  # noqa: F401  (fixtures)
from .transport_helpers import rows, wait_for

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

QUEUE = "transport_tests"


class CeleryWorker:
    """A real ``celery worker``: one process (or thread), prefetch 4."""

    def __init__(self, env: dict[str, str], record: Path, pool: str = "prefork") -> None:
        self.record = record
        self.log = record.with_name("worker-running.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.transport_celery_app", "worker", "-P", pool,
             "-c", "1", "-Q", QUEUE, "-l", "warning", "-n", f"run{os.getpid()}@%h"],
            env=dict(env, JT_PREFETCH="4"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )

    def lines(self, kind: str) -> list[list[str]]:
        text = self.record.read_text() if self.record.exists() else ""
        return [line.split()[1:] for line in text.splitlines() if line.split()[0] == kind]

    def stop(self) -> None:
        terminate(self.proc, timeout=20)
        print(self.log.read_text()[-5000:], file=sys.stderr)  # shown when the test fails


def _shown() -> tuple[set[str], set[str]]:
    """(task ids shown running, task ids shown claimed) by the Job API's reads."""
    running = {p.uuid for p in JobProcess.query.filter(queue=QUEUE).all()}
    claimed = {r.uuid for r in JobRequest.query.filter(queue=QUEUE, state="claimed").all()}
    return running, claimed


def _cli(*args: str) -> str:
    return CliRunner().invoke(main, list(args), catch_exceptions=False).output


def _stats_cells() -> dict[str, str]:
    lines = _cli("stats").splitlines()
    (row,) = [line for line in lines[1:] if line.split()[:1] == [QUEUE]]
    return dict(zip(lines[0].split(), row.split()))


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html).strip()


def _table_row(page: str, table_id: str, first_cell: str) -> dict[str, str]:
    """The cells, by heading, of the row of table ``table_id`` whose first
    cell is ``first_cell``."""
    body = page.split(f'<table class="grid" id="{table_id}">', 1)[1].split("</table>", 1)[0]
    heads = [_text(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", body, re.S)]
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S):
        cells = [_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if cells and cells[0] == first_cell:
            return dict(zip(heads, cells))
    raise AssertionError(f"no row {first_cell!r} in table {table_id}: {body}")


def _running_card(page: str) -> str:
    card = page.split('data-card="running"', 1)[1].split("</a>", 1)[0]
    return _text(card.split('<span class="value">', 1)[1].split("</span>", 1)[0])


def _dashboard(db_url: str) -> tuple[dict[str, str], dict[str, str], str, str]:
    """(the Workers row of the consumer holding the task messages, the
    Overview's row of the queue, its Running card, the Processes page)."""
    (holder,) = {r.worker_id for r in rows_of_queue(db_url)}
    dash = client()
    overview = dash.get("/").text
    return (
        _table_row(dash.get("/workers").text, "workers", holder),
        _table_row(overview, "queues", QUEUE),
        _running_card(overview),
        dash.get("/processes").text,
    )


def rows_of_queue(db_url: str) -> list[Any]:
    return rows(db_url, QUEUE)


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])  # a child process starts it / the consumer
def test_acks_late_the_running_task_is_running_and_the_prefetched_are_claimed(
    db_url: str, celery_env: dict[str, str], app: object, tmp_path: Path, pool: str  # noqa: F811
) -> None:
    mod: Any = app
    gate = tmp_path / "gate"
    slow = mod.gated_late.delay("slow", str(gate)).id
    queued = {mod.note.delay(f"q{i}").id for i in range(3)}
    worker = CeleryWorker(celery_env, Path(celery_env["JT_RECORD"]), pool)
    try:
        wait_for(lambda: worker.proc.poll() is not None or worker.lines("started"), timeout=60, what="the slow task")
        assert worker.proc.poll() is None, worker.log.read_text()
        # Prefetched: all four are held by the consumer (running in the table).
        wait_for(
            lambda: len(rows_of_queue(db_url)) == 4 and all(r.state == tables.RUNNING for r in rows_of_queue(db_url)),
            what="four messages held",
        )
        # The consumer reports the one it started within half a second.
        wait_for(lambda: _shown() == ({slow}, queued), what=f"slow running, the rest claimed (shown {_shown()})")
        held = {r.task_id: r for r in rows_of_queue(db_url)}
        assert held[slow].started_at is not None
        assert all(held[t].started_at is None for t in queued)  # delivered, not started

        out = _cli("requests", "--queue", QUEUE, "--state", "running")
        assert slow in out and not any(t in out for t in queued), out
        out = _cli("requests", "--queue", QUEUE, "--state", "claimed")
        assert slow not in out and all(t in out for t in queued), out
        cells = _stats_cells()
        assert (cells["running"], cells["claimed"]) == ("1", "3"), cells

        worker_row, queue_row, card, page = _dashboard(db_url)
        assert (worker_row["Kind"], worker_row["Running"], worker_row["Claimed"]) == ("kombu", "1", "3"), worker_row
        assert (queue_row["Running"], queue_row["Claimed"], card) == ("1", "3", "1"), queue_row
        assert "1 job(s) running" in page and slow in page, page
        assert not any(t in page for t in queued), page

        # The slow task ends (acked after it returns), the others run.
        gate.touch()
        wait_for(lambda: len(worker.lines("note")) == 3, timeout=60, what="the prefetched tasks")
        wait_for(lambda: rows_of_queue(db_url) == [], what="the acks")
        assert _shown() == (set(), set())
    finally:
        gate.touch()
        worker.stop()


def test_early_ack_the_started_task_leaves_the_table_and_the_prefetched_are_claimed(
    db_url: str, celery_env: dict[str, str], app: object, tmp_path: Path  # noqa: F811
) -> None:
    mod: Any = app
    gate = tmp_path / "gate"
    slow = mod.gated.delay("slow", str(gate)).id  # acked as it starts (Celery's default)
    queued = {mod.note.delay(f"q{i}").id for i in range(3)}
    worker = CeleryWorker(celery_env, Path(celery_env["JT_RECORD"]))
    try:
        wait_for(lambda: worker.proc.poll() is not None or worker.lines("started"), timeout=60, what="the slow task")
        assert worker.proc.poll() is None, worker.log.read_text()
        # Its ack deleted its row; the three behind it are held, not started.
        wait_for(
            lambda: {r.task_id for r in rows_of_queue(db_url)} == queued
            and all(r.state == tables.RUNNING for r in rows_of_queue(db_url)),
            what="the slow task's row acked, three held",
        )
        assert _shown() == (set(), queued)
        assert all(r.started_at is None for r in rows_of_queue(db_url))

        out = _cli("requests", "--queue", QUEUE, "--state", "running")
        assert slow not in out and not any(t in out for t in queued), out
        out = _cli("requests", "--queue", QUEUE, "--state", "claimed")
        assert slow not in out and all(t in out for t in queued), out
        cells = _stats_cells()
        assert (cells["running"], cells["claimed"]) == ("0", "3"), cells

        worker_row, queue_row, card, page = _dashboard(db_url)
        assert (worker_row["Running"], worker_row["Claimed"]) == ("0", "3"), worker_row
        assert (queue_row["Running"], queue_row["Claimed"], card) == ("0", "3", "0"), queue_row
        assert "0 job(s) running" in page and slow not in page, page

        gate.touch()
        wait_for(lambda: len(worker.lines("note")) == 3, timeout=60, what="the prefetched tasks")
        wait_for(lambda: rows_of_queue(db_url) == [], what="the acks")
    finally:
        gate.touch()
        worker.stop()


def _drain(conn: Any) -> None:
    try:
        conn.drain_events(timeout=0.5)
    except TimeoutError:  # socket.timeout: nothing came, look again
        pass


def test_a_consumer_marks_started_only_the_deliveries_it_still_holds(db_url: str) -> None:
    """The lease thread's report, in process: this process is the consumer
    (as in Celery's solo and thread pools) and records starts itself."""
    import celery  # noqa: F401  (loaded: the consumer keeps a ledger, as a Celery worker's does)
    from kombu import Consumer, Exchange, Producer, Queue

    from jobtable.transport import started

    from .transport_helpers import acked, connect

    name = "running_report"
    with connect(db_url) as conn:
        queue = Queue(name, Exchange(name), name)
        producer = Producer(conn.default_channel)
        for i in range(3):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=name, declare=[queue])
        held: list[Any] = []
        with Consumer(conn, [queue], callbacks=[lambda body, message: held.append(message)], prefetch_count=3):
            wait_for(lambda: _drain(conn) or len(held) == 3, what="three messages delivered")
            first, second, third = rows(db_url, name)
            assert [r.started_at for r in (first, second, third)] == [None, None, None]
            ids = lambda: ({p.uuid for p in JobProcess.query.filter(queue=name).all()},  # noqa: E731
                           {r.uuid for r in JobRequest.query.filter(queue=name, state="claimed").all()})
            assert ids() == (set(), {first.task_id, second.task_id, third.task_id})
            by_row = {int(m.delivery_tag.split(":")[0]): m for m in held}
            # The second is acked first (early ack), then "starts": its tag
            # is no longer held, nothing is written for it.
            by_row[second.id].ack()
            acked(db_url, 2, queue=name)
            started.task_started(second.task_id, by_row[second.id].delivery_tag)
            started.task_finished(second.task_id)
            # The first starts: the lease thread marks it within half a second.
            started.task_started(first.task_id, by_row[first.id].delivery_tag)
            wait_for(lambda: ids() == ({first.task_id}, {third.task_id}), what=f"first running (shown {ids()})")
            (row,) = [r for r in rows(db_url, name) if r.id == first.id]
            assert row.started_at is not None
            # A forged or stale tag of the third (an earlier delivery, or
            # not of this transport) marks nothing.
            started.task_started(third.task_id, f"{third.id}:{third.deliveries + 1}")
            started.task_started(third.task_id, "not-a-tag")
            started.task_finished(third.task_id)
            # Given back (reject with requeue): pending again, not started.
            by_row[first.id].requeue()
            started.task_finished(first.task_id)
            (row,) = [r for r in rows(db_url, name) if r.id == first.id]
            assert (row.state, row.started_at) == (tables.PENDING, None)
            assert ids() == (set(), {third.task_id})
            keeper = conn.transport._keeper
            assert keeper.report_started() == 0  # the stale tags: nothing held matches
            by_row[third.id].ack()
        acked(db_url, 1, queue=name)
