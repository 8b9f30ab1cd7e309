""""Running" means running: a member's claimed-but-not-started jobs are
shown as claimed, not running, by every read (JobProcess.query,
`jobtable requests --state`, `jobtable stats`, the worker's stats line).
The worker's heartbeat carries the job each member runs right now."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from jobtable import JobProcess, JobRequest, run_in_worker_many
from jobtable.cli import main
from jobtable.db import engine as db_engine
from jobtable.db import reads_sql, tables

from tests.dashboard_client import client
from tests.worker_jobs import Log, lines, requests, start_worker, stop, wait_for, worker_env


def _shown() -> tuple[list[str], list[str]]:
    """(uuids shown running, uuids shown claimed), newest first."""
    running = [p.uuid for p in JobProcess.query.all()]
    claimed = [r.uuid for r in JobRequest.query.filter(state="claimed").all()]
    return running, claimed


def _worker_counts(page: str) -> tuple[int, int]:
    """(running, claimed) summed over the Workers page's rows."""
    import re

    running = claimed = 0
    body = page.split('<table class="grid" id="workers">', 1)[1].split("</table>", 1)[0]
    for row in re.findall(r"<tr class=[^>]*>(.*?)</tr>", body, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        running += int(cells[6])
        claimed += int(cells[7])
    return running, claimed


def test_claimed_jobs_are_not_shown_running(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    jobs = run_in_worker_many([Log(log, str(i), sleep=3.0) for i in range(3)])
    uuids = [j.uuid for j in jobs]
    proc = start_worker(worker_env(subprocess_env), "--max-processes", "1", "--max-pending-per-process", "4")
    try:
        wait_for(lambda: lines(log) == ["0"], what="the first job to start")
        # All three were claimed in one batch: the table says running for all.
        assert [r.state for r in requests()] == [tables.RUNNING] * 3
        # One is running; the heartbeat reports it within RUNNING_EVERY.
        wait_for(lambda: _shown() == ([uuids[0]], uuids[:0:-1]), what="the first job running, the others claimed")
        with db_engine.connect() as conn:
            depth = reads_sql.queue_depth(conn, ["default"])
        assert (depth[tables.RUNNING], depth[reads_sql.CLAIMED]) == (1, 2)
        states = {r.uuid: r.state for r in JobRequest.query.all()}
        assert states == {uuids[0]: tables.RUNNING, uuids[1]: "claimed", uuids[2]: "claimed"}

        out = CliRunner().invoke(main, ["requests", "--state", "running"], catch_exceptions=False).output
        assert uuids[0] in out and uuids[1] not in out and uuids[2] not in out, out
        out = CliRunner().invoke(main, ["requests", "--state", "claimed"], catch_exceptions=False).output
        assert uuids[0] not in out and uuids[1] in out and uuids[2] in out, out
        header, row = CliRunner().invoke(main, ["stats"], catch_exceptions=False).output.splitlines()[:2]
        cells = dict(zip(header.split(), row.split()))
        assert (cells["claimed"], cells["running"]) == ("2", "1"), (header, row)

        # The dashboard's Workers page: 1 running, 2 claimed (over the
        # worker's rows: one per member).
        page = client().get("/workers").text
        running, claimed = _worker_counts(page)
        assert (running, claimed) == (1, 2), page

        # The next job starts: the report follows it.
        wait_for(lambda: lines(log) == ["0", "1"], what="the second job to start")
        wait_for(lambda: _shown()[0] == [uuids[1]], what="the second job shown running")
        assert _shown()[1] == [uuids[2]]
    finally:
        stop(proc)
    # Stopped: nothing is shown running or claimed (the worker rows are gone).
    assert _shown()[0] == []
