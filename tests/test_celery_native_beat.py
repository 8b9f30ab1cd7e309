"""A Celery app's ``beat_schedule`` under the native worker (``jobtable
worker --celery-app``): entries become scheduler entries, each slot sent
once across workers by Celery's own ``apply_async``; what cannot run is
refused at start, naming the entry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab, schedule, solar
from sqlalchemy import select

from jobtable.db import clock, schedules_sql, tables
from jobtable.db.engine import get_engine
from jobtable.exceptions import ConfigurationError
from jobtable.shim import celery_beat
from tests.conftest import ROOT
from tests.polling import terminate, wait_for

pytestmark = pytest.mark.dialects("sqlite", "postgresql")

APP = "tests.celery_beat_app:app"


def _app(beat_schedule: dict[str, Any], broker: str = "memory://") -> Celery:
    app = Celery("beat_unit", broker=broker, set_as_current=False)
    app.conf.task_default_queue = "unit_default"

    @app.task(name="unit.tick", shared=False)
    def tick(*args: Any, **kwargs: Any) -> None:
        return None

    app.conf.beat_schedule = beat_schedule
    app.finalize(auto=True)
    return app


def _solar() -> Any:
    value = solar.__new__(solar)  # celery's constructor imports ephem, not installed here
    value.event, value.lat, value.lon = "dawn_astronomical", 52.5, 13.4
    return value


# -- entries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5.0, "every 5s (UTC)"),
        (1, "every 1s (UTC)"),
        (timedelta(seconds=10), "every 10s (UTC)"),
        (timedelta(minutes=15), "*/15 * * * * (UTC)"),
        (schedule(run_every=timedelta(hours=1)), "0 * * * * (UTC)"),
        (schedule(run_every=90), "every 90s (UTC)"),
        (crontab(), "* * * * * (UTC)"),
        (crontab(minute=0, hour="9-17", day_of_week="mon-fri"), "0 9-17 * * mon-fri (UTC)"),
        (crontab(minute="*/15", day_of_month="1,15"), "*/15 * 1,15 * * (UTC)"),
        ("30 4 * * *", "30 4 * * * (UTC)"),
    ],
)
def test_celery_schedules_become_jobtable_schedules(value: Any, expected: str) -> None:
    [(job, when)] = celery_beat.beat_jobs(_app({"e": {"task": "unit.tick", "schedule": value}}))
    assert str(when) == expected
    assert job.job_name() == "celery-beat:e (unit.tick)"


def test_the_entry_name_depends_on_the_key_and_task_not_the_arguments() -> None:
    """The ledger name is what every worker must agree on: the entry's key
    and task (and the schedule, added by the scheduler); two entries of the
    same task with different arguments stay two entries."""
    from jobtable.scheduling import load_schedule

    app = _app({
        "a": {"task": "unit.tick", "schedule": 5, "args": [1]},
        "b": {"task": "unit.tick", "schedule": 5, "args": [2], "kwargs": {"x": {"deep": [1]}}},
    })
    names = [entry.name for entry in load_schedule(celery_beat.beat_jobs(app))]
    assert names == ["celery-beat:a (unit.tick) [every 5s (UTC)]", "celery-beat:b (unit.tick) [every 5s (UTC)]"]


def test_the_queue_is_the_one_celery_routes_to() -> None:
    app = _app({
        "routed": {"task": "unit.tick", "schedule": 5, "options": {"queue": "reports"}},
        "default": {"task": "unit.tick", "schedule": 5},
    })
    app.conf.task_routes = {}
    queues = {job.key: job.default_queue() for job, _ in celery_beat.beat_jobs(app)}
    assert queues == {"routed": "reports", "default": "unit_default"}


class _Hostile:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "unit.nope", "schedule": 5}, "names the task 'unit.nope', which the Celery app does not define"),
        ({"task": None, "schedule": 5}, "names the task None"),
        ({"task": "unit.tick", "schedule": _solar()}, "solar schedules are not supported"),
        ({"task": "unit.tick", "schedule": 0.5}, "whole seconds, 1 or more"),
        ({"task": "unit.tick", "schedule": 0}, "whole seconds, 1 or more"),
        ({"task": "unit.tick", "schedule": -5}, "whole seconds, 1 or more"),
        ({"task": "unit.tick", "schedule": True}, "is not supported"),
        ({"task": "unit.tick", "schedule": _Hostile()}, "is not supported"),
        ({"task": "unit.tick", "schedule": schedule(5, relative=True)}, "relative=True"),
        ({"task": "unit.tick", "schedule": 5, "relative": True}, "relative=True"),
        ({"task": "unit.tick", "schedule": crontab(day_of_week=1, day_of_month=1)}, "matching both"),
        ({"task": "unit.tick", "schedule": "61 * * * *"}, "beat_schedule['e']"),
        ({"task": "unit.tick", "schedule": 5, "args": "abc"}, "args must be a list or tuple"),
        ({"task": "unit.tick", "schedule": 5, "args": [object()]}, "not JSON"),
        ({"task": "unit.tick", "schedule": 5, "args": ["\x00"], "when": 1}, "unknown keys ['when']"),
        ({"task": "unit.tick"}, "each entry is a dict with 'task' and 'schedule'"),
        ("unit.tick", "each entry is a dict"),
    ],
)
def test_what_cannot_run_is_refused_naming_the_entry(entry: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        celery_beat.beat_jobs(_app({"e": entry}))
    assert "beat_schedule['e']" in str(info.value)
    assert message in str(info.value)


def test_a_beat_schedule_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="beat_schedule is list, not a dict"):
        celery_beat.beat_jobs(_app([("e", {"task": "unit.tick", "schedule": 5})]))  # type: ignore[arg-type]


def test_run_in_worker_outside_the_scheduler_is_refused() -> None:
    [(job, _)] = celery_beat.beat_jobs(_app({"e": {"task": "unit.tick", "schedule": 5}}))
    with pytest.raises(ConfigurationError, match="sent by the worker's scheduler only"):
        job.run_in_worker()


# -- the message -----------------------------------------------------------------------


def test_the_message_is_the_one_the_jobtable_broker_stores_for_celery_beat(db_url: str) -> None:
    """The entry's row matches, column for column and key for key, what the
    jobtable broker stores when celery beat sends the same entry
    (``apply_async`` with beat's ``celery_beat_task`` header) -- but is
    written in the scheduler's transaction."""
    from kombu import pools

    pools.reset()
    app = _app(
        {"e": {"task": "unit.tick", "schedule": 5, "args": [1, "two"], "kwargs": {"k": [3]},
               "options": {"queue": "reports", "priority": 4, "expires": 60}}},
        broker="jobtable+" + db_url,
    )
    engine = get_engine(db_url)
    [(job, _)] = celery_beat.beat_jobs(app)
    with engine.connect() as conn, conn.begin():
        request = job.run_in_worker(connection=conn, concurrency_key="schedule:e")
        assert request is not None
        # The key is taken while the run waits: the next slot is skipped.
        assert job.run_in_worker(connection=conn, concurrency_key="schedule:e") is None
    sent = app.tasks["unit.tick"].apply_async(
        [1, "two"], {"k": [3]}, queue="reports", priority=4, expires=60, headers={"celery_beat_task": True}
    )
    with engine.connect() as conn:
        rows = {row.task_id: row for row in conn.execute(select(tables.request))}
    ours, celerys = rows[request.uuid], rows[sent.id]
    for column in ("task_name", "queue", "priority", "state", "attempt"):
        assert getattr(ours, column) == getattr(celerys, column), column
    assert ours.concurrency_key == "schedule:e" and celerys.concurrency_key is None
    assert ours.expires_at is not None and celerys.expires_at is not None
    assert abs((ours.expires_at - celerys.expires_at).total_seconds()) < 30
    a, b = json.loads(ours.message), json.loads(celerys.message)
    assert sorted(a) == sorted(b)
    assert sorted(a["properties"]) == sorted(b["properties"])
    assert a["properties"]["delivery_info"] == b["properties"]["delivery_info"]
    assert sorted(set(a["headers"]) - {"concurrency_key"}) == sorted(b["headers"])
    assert a["headers"]["celery_beat_task"] is True
    assert json.loads(a["body"])[:2] == json.loads(b["body"])[:2] == [[1, "two"], {"k": [3]}]
    for key in ("content-type", "content-encoding"):
        assert a[key] == b[key]
    pools.reset()


# -- workers ----------------------------------------------------------------------------


def _worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobtable", "worker", "--celery-app", APP, "--max-processes", "1", *args],
        env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
    )


_ENQUEUED = re.compile(r"Enqueued celery-beat:tick-every-second \S+ \[every 1s \(UTC\)\] for (\S+) \(job ([0-9a-f-]+)\)")


def test_two_workers_send_each_slot_once(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    env = dict(subprocess_env, JT_RECORD=str(record), JT_BEAT="ok")
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    procs = [_worker(env, log, "--queue", "celery_beat_q") for log in logs]

    def fired() -> list[tuple[str, str]]:
        return [m.groups() for log in logs if log.exists() for m in _ENQUEUED.finditer(log.read_text())]

    try:
        wait_for(lambda: any(p.poll() is not None for p in procs) or len(fired()) >= 5, timeout=90,
                 what="five slots enqueued")
        assert all(p.poll() is None for p in procs), "\n".join(log.read_text() for log in logs)
        wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 5, timeout=30,
                 what="five runs")
    finally:
        for proc in procs:
            terminate(proc)
    texts = [log.read_text() for log in logs]
    assert all("Scheduling the Celery app's 3 beat_schedule entries" in text for text in texts), texts[0]
    slots = Counter(slot for slot, _ in fired())
    assert slots and max(slots.values()) == 1, slots  # no slot twice, whichever worker sent it
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert Counter(run["id"] for run in runs).most_common(1)[0][1] == 1  # each message ran once
    assert {run["id"] for run in runs} <= {job for _, job in fired()}  # every run was a slot sent
    assert {(r["label"], r["n"], r["queue"], r["beat"]) for r in runs} == {("every-second", 7, "celery_beat_q", True)}


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("unknown", "beat_schedule['report-nightly'] names the task 'tests.celery_beat_app.no_such_task'"),
        ("solar", "beat_schedule['at-dawn']: solar schedules are not supported"),
    ],
)
def test_a_worker_refuses_to_start_on_an_entry_it_cannot_run(
    subprocess_env: dict[str, str], tmp_path: Path, case: str, named: str
) -> None:
    env = dict(subprocess_env, JT_RECORD=str(tmp_path / "record.txt"), JT_BEAT=case)
    proc = _worker(env, tmp_path / "w.log")
    try:
        assert proc.wait(timeout=60) != 0
    finally:
        terminate(proc)
    text = (tmp_path / "w.log").read_text()
    assert named in text, text
    assert " consuming " not in text


def test_no_celery_beat_leaves_the_entries_to_celery_beat(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """--no-celery-beat: the app's entries are not read (even a broken one), and the worker says so."""
    env = dict(subprocess_env, JT_RECORD=str(tmp_path / "record.txt"), JT_BEAT="unknown")
    log = tmp_path / "w.log"
    proc = _worker(env, log, "--no-celery-beat")
    try:
        wait_for(lambda: proc.poll() is not None or " consuming " in log.read_text(), timeout=60, what="worker up")
        assert proc.poll() is None, log.read_text()
    finally:
        terminate(proc)
    text = log.read_text()
    assert "Not scheduling the Celery app's 2 beat_schedule entries (--no-celery-beat)" in text
    assert "Enqueued celery-beat" not in text


def _schedule_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobtable", "schedule", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_jobtable_schedule_lists_the_celery_apps_beat_entries(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """`jobtable schedule --celery-app` (or JOBTABLE_CELERY_APP) lists the entries the worker schedules, with
    their last run from the ledger; without it a beat entry's ledger row is stale, and --prune keeps it only
    when the app is given."""
    env = dict(subprocess_env, JT_RECORD=str(tmp_path / "record.txt"), JT_BEAT="ok")
    listed = _schedule_cli(env, "--celery-app", APP)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["job", "schedule", "time", "zone", "last", "run", "next", "run"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {f"celery-beat:tick-{key}" for key in ("every-second", "hourly", "daily")}, listed.stdout
    assert "every 1s" in rows["celery-beat:tick-every-second"]
    assert "0 * * * *" in rows["celery-beat:tick-hourly"]
    assert "No scheduled jobs" not in listed.stdout

    # A slot recorded in the ledger, as a worker's scheduler records one.
    hourly = "celery-beat:tick-hourly (tests.celery_beat_app.tick) [0 * * * * (UTC)]"
    with get_engine().begin() as conn:
        assert schedules_sql.schedule_claim(conn, hourly, datetime(2026, 1, 1, 10, tzinfo=timezone.utc), clock.utcnow())
    by_env = _schedule_cli(dict(env, JOBTABLE_CELERY_APP=APP))
    assert by_env.returncode == 0, by_env.stderr
    assert "2026-01-01 10:00 UTC" in next(line for line in by_env.stdout.splitlines() if "tick-hourly" in line)
    assert "ledger row(s) of entries that no longer exist" not in by_env.stdout

    without = _schedule_cli(env)
    assert without.returncode == 0, without.stderr
    assert "No scheduled jobs" in without.stdout
    assert "1 ledger row(s) of entries that no longer exist" in without.stdout
    assert "pass --celery-app to list them" in without.stdout

    kept = _schedule_cli(env, "--prune", "--celery-app", APP)
    assert kept.returncode == 0 and "Pruned" not in kept.stdout, kept.stdout + kept.stderr
    pruned = _schedule_cli(env, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert f"Pruned the ledger row of removed entry {hourly!r}." in pruned.stdout
    assert "pass --celery-app" not in pruned.stdout


def test_jobtable_schedule_refuses_an_entry_the_worker_would_refuse(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(subprocess_env, JT_RECORD=str(tmp_path / "record.txt"), JT_BEAT="unknown")
    refused = _schedule_cli(env, "--celery-app", APP)
    assert refused.returncode != 0
    assert "beat_schedule['report-nightly'] names the task 'tests.celery_beat_app.no_such_task'" in refused.stderr
