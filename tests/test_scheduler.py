"""The scheduler against real databases: each slot enqueued once, across
restarts and racing processes, catch-up after downtime, ledger hygiene.

Time is passed to ``tick(now)`` explicitly: nothing here waits for the clock.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, event, func, select

from jobtable.db import clock, schedules_sql, tables
from jobtable.exceptions import ConfigurationError
from jobtable.db.engine import get_engine
from jobtable.scheduler import Scheduler
from jobtable.scheduling import ScheduleEntry, load_schedule
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)

UTC = timezone.utc
T0 = datetime(2026, 11, 24, 9, 2, tzinfo=UTC)  # between two */5 slots

EVERY_5 = ["tests.schedule_jobs.Tick", "*/5 * * * *"]
HOURLY = ["tests.schedule_jobs.Hourly", "0 * * * *"]


@pytest.fixture(autouse=True)
def _no_leaked_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment beats jobtable.configure(): a JOBTABLE_DATABASE_URL left
    # in os.environ by another test module would point db_url's tests at
    # another database.
    monkeypatch.delenv("JOBTABLE_DATABASE_URL", raising=False)


def entries(*items: object) -> list[ScheduleEntry]:
    return load_schedule(list(items))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def requests() -> list[tuple[str, str | None]]:
    with get_engine().connect() as conn:
        rows = conn.execute(select(tables.request.c.task_name, tables.request.c.concurrency_key).order_by(tables.request.c.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def ledger() -> dict[str, datetime | None]:
    with get_engine().connect() as conn:
        return {row.name: row.last_slot for row in conn.execute(select(tables.schedule))}


def drain() -> None:
    """What a worker does: the enqueued jobs run and leave the table."""
    with get_engine().begin() as conn:
        conn.execute(delete(tables.request))


def test_each_slot_is_enqueued_once(db_url: str) -> None:
    scheduler = Scheduler(entries(EVERY_5))
    # A new entry starts with its next slot: 9:00 (before it existed) does not run.
    assert scheduler.tick(at(0)).enqueued == []
    assert scheduler.next_due == at(3)
    report = scheduler.tick(at(3))  # 9:05
    assert [(f.name, f.slot) for f in report.enqueued] == [("tests.schedule_jobs.Tick [*/5 * * * *]", at(3))]
    assert report.enqueued[0].request is not None
    assert scheduler.tick(at(3.5)).enqueued == []
    assert scheduler.tick(at(4.9)).enqueued == []
    assert requests() == [("tests.schedule_jobs.Tick", "schedule:tests.schedule_jobs.Tick [*/5 * * * *]")]
    assert ledger() == {"tests.schedule_jobs.Tick [*/5 * * * *]": at(3)}
    drain()
    assert len(scheduler.tick(at(8)).enqueued) == 1  # 9:10


def test_a_restarted_scheduler_does_not_repeat_a_slot(db_url: str) -> None:
    Scheduler(entries(EVERY_5)).tick(at(0))
    assert len(Scheduler(entries(EVERY_5)).tick(at(3)).enqueued) == 1
    # A new process (a restarted worker) in the same slot: nothing.
    restarted = Scheduler(entries(EVERY_5))
    assert restarted.tick(at(3.2)).enqueued == []
    assert len(requests()) == 1


def test_a_new_entry_down_before_its_first_slot_still_catches_up(db_url: str) -> None:
    Scheduler(entries(EVERY_5)).tick(at(0))  # first seen at 9:02, then down
    report = Scheduler(entries(EVERY_5)).tick(at(9))  # 9:11
    assert [f.slot for f in report.enqueued] == [at(8)]  # 9:10, after it was first seen


def test_after_downtime_only_the_latest_missed_slot_runs(db_url: str) -> None:
    Scheduler(entries(EVERY_5)).tick(at(0))  # seen at 9:02, then down until 9:44
    report = Scheduler(entries(EVERY_5), catch_up_window=600).tick(at(42))
    assert [f.slot for f in report.enqueued] == [at(38)]  # 9:40 only, not 9:05 ... 9:35
    assert len(requests()) == 1
    assert ledger()["tests.schedule_jobs.Tick [*/5 * * * *]"] == at(38)


def test_a_missed_slot_older_than_the_window_is_skipped(db_url: str) -> None:
    name = "tests.schedule_jobs.Hourly [0 * * * *]"
    Scheduler(entries(HOURLY)).tick(at(0))  # 9:02
    scheduler = Scheduler(entries(HOURLY), catch_up_window=600)
    report = scheduler.tick(at(88))  # 10:30: the 10:00 slot is 30 minutes old
    assert report.enqueued == [] and [f.slot for f in report.late] == [at(58)]
    assert ledger()[name] == at(58)  # moved on: it will not run later either
    assert scheduler.tick(at(100)).enqueued == []
    assert [f.slot for f in scheduler.tick(at(118)).enqueued] == [at(118)]  # 11:00 on time


def test_catch_up_window_setting(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobtable import settings

    monkeypatch.setenv("JOBTABLE_SCHEDULE_CATCH_UP_WINDOW", "60")
    settings.reset()
    assert Scheduler([]).catch_up_window == timedelta(seconds=60)
    monkeypatch.setenv("JOBTABLE_SCHEDULE_CATCH_UP_WINDOW", "-1")
    settings.reset()
    with pytest.raises(ConfigurationError, match="JOBTABLE_SCHEDULE_CATCH_UP_WINDOW=.-1.*at least 0"):
        Scheduler([])


def test_removed_entries_leave_no_rows(db_url: str) -> None:
    Scheduler(entries(EVERY_5, HOURLY)).tick(at(0))
    assert set(ledger()) == {"tests.schedule_jobs.Tick [*/5 * * * *]", "tests.schedule_jobs.Hourly [0 * * * *]"}
    Scheduler(entries(HOURLY)).tick(at(1))
    assert set(ledger()) == {"tests.schedule_jobs.Hourly [0 * * * *]"}
    Scheduler([]).tick(at(1))
    assert ledger() == {}


def test_a_changed_cron_is_a_new_entry(db_url: str) -> None:
    Scheduler(entries(["tests.schedule_jobs.Tick", "*/5 * * * *"])).tick(at(0))
    # Deployed with */10 at 9:07: the old row goes, the new entry waits for 9:10.
    changed = Scheduler(entries(["tests.schedule_jobs.Tick", "*/10 * * * *"]))
    assert changed.tick(at(5)).enqueued == []
    assert ledger() == {"tests.schedule_jobs.Tick [*/10 * * * *]": None}  # never run
    assert [f.slot for f in changed.tick(at(8)).enqueued] == [at(8)]


def test_overlapping_runs_are_skipped_not_piled_up(db_url: str) -> None:
    scheduler = Scheduler(entries(EVERY_5))
    scheduler.tick(at(0))
    assert len(scheduler.tick(at(3)).enqueued) == 1
    report = scheduler.tick(at(8))  # the 9:05 job is still waiting
    assert report.enqueued == [] and [f.slot for f in report.busy] == [at(8)]
    assert len(requests()) == 1
    assert ledger()["tests.schedule_jobs.Tick [*/5 * * * *]"] == at(8)


def test_a_job_with_its_own_concurrency_key_keeps_it(db_url: str) -> None:
    scheduler = Scheduler(entries(["tests.schedule_jobs.OwnKey", "*/5 * * * *"]))
    scheduler.tick(at(0))
    scheduler.tick(at(3))
    assert requests() == [("tests.schedule_jobs.OwnKey", "own-key")]


def test_shell_command_entries_are_enqueued(db_url: str) -> None:
    scheduler = Scheduler(entries(["cmd:echo hello", "*/5 * * * *"]))
    scheduler.tick(at(0))
    (fired,) = scheduler.tick(at(3)).enqueued
    assert fired.request is not None and fired.request.job_class == "jobtable.scheduling.ScheduledCommand"


def test_one_failing_entry_does_not_stop_the_others(db_url: str) -> None:
    scheduler = Scheduler(entries(["tests.schedule_jobs.Refuses", "*/5 * * * *"], EVERY_5))
    scheduler.tick(at(0))
    report = scheduler.tick(at(3))
    assert [name for name, _ in report.errors] == ["tests.schedule_jobs.Refuses [*/5 * * * *]"]
    assert "refusing on purpose" in str(report.errors[0][1])
    assert len(report.enqueued) == 1
    # Its ledger did not move (the transaction rolled back): it is retried later.
    assert ledger()["tests.schedule_jobs.Refuses [*/5 * * * *]"] is None
    assert scheduler.next_due == at(3) + timedelta(seconds=30)  # the retry, before the other's 9:10
    assert scheduler.seconds_until_due(at(3)) == 30


def test_ticks_touch_the_database_only_when_something_is_due(db_url: str) -> None:
    scheduler = Scheduler(entries(EVERY_5, HOURLY))
    scheduler.tick(at(0))
    statements: list[str] = []
    engine = get_engine()

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        for second in range(0, 170, 5):  # 9:02:00 .. 9:04:50: nothing due
            scheduler.tick(at(second / 60))
        assert statements == []
        scheduler.tick(at(3))
        assert statements  # the 9:05 slot
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
def scheduled_classes() -> Iterator[None]:
    from tests.schedule_jobs import scheduled_classes

    with scheduled_classes():
        yield


def test_schedule_class_attributes_are_scheduled(db_url: str, scheduled_classes: None) -> None:
    scheduler = Scheduler()  # default: JOBTABLE_SCHEDULE and schedule attributes
    names = [entry.name for entry in scheduler.entries]
    assert "tests.schedule_jobs.Nightly [0 3 * * *]" in names
    scheduler.tick(datetime(2026, 11, 24, 2, 59, tzinfo=UTC))
    fired = scheduler.tick(datetime(2026, 11, 24, 3, 0, tzinfo=UTC)).enqueued
    assert "tests.schedule_jobs.Nightly [0 3 * * *]" in [f.name for f in fired]


# -- races ------------------------------------------------------------------------------------

PROCESSES = 6
SLOTS = 6


def _race_member(
    url: str,
    index: int,
    barrier: multiprocessing.synchronize.Barrier,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    try:
        from jobtable import settings
        from jobtable.db.engine import check_schema

        settings.reset()
        import jobtable

        jobtable.configure(database_url=url)
        check_schema(get_engine())
        scheduler = Scheduler(entries(EVERY_5, HOURLY))
        barrier.wait(timeout=60)
        scheduler.tick(at(0))  # everyone seeds the ledger at once
        for slot in range(SLOTS):
            barrier.wait(timeout=60)
            report = scheduler.tick(at(3 + 5 * slot))  # 9:05, 9:10, ... all at once
            out.put(("claims", slot, len(report.enqueued) + len(report.busy), len(report.enqueued)))
            barrier.wait(timeout=60)
            if index == 0:
                with get_engine().begin() as conn:
                    n = conn.execute(select(func.count()).select_from(tables.request)).scalar_one()
                    conn.execute(delete(tables.request))
                out.put(("rows", slot, n, 0))
            barrier.wait(timeout=60)
        out.put(("done", index, 0, 0))
    except BaseException as exc:  # report, never hang the parent
        out.put(("error", index, repr(exc), 0))
        barrier.abort()


def test_racing_processes_enqueue_each_slot_exactly_once(db_url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [ctx.Process(target=_race_member, args=(db_url, i, barrier, out)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    messages = []
    while sum(1 for m in messages if m[0] in ("done", "error")) < PROCESSES:
        messages.append(out.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
    errors = [m for m in messages if m[0] == "error"]
    assert not errors, errors
    for slot in range(SLOTS):
        claims = [m for m in messages if m[0] == "claims" and m[1] == slot]
        assert len(claims) == PROCESSES
        assert sum(m[2] for m in claims) == 1, (slot, claims)  # one process claimed the slot
        assert sum(m[3] for m in claims) == 1, (slot, claims)  # and enqueued it
        (rows,) = [m for m in messages if m[0] == "rows" and m[1] == slot]
        assert rows[2] == 1, rows  # one row in the queue
    assert ledger()["tests.schedule_jobs.Tick [*/5 * * * *]"] == at(3 + 5 * (SLOTS - 1))


# -- jobtable schedule ------------------------------------------------------------------------


def test_schedule_command_lists_last_and_next_runs(db_url: str, scheduled_classes: None) -> None:
    from click.testing import CliRunner

    import jobtable
    from jobtable.cli import main

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, ["--app", "tests.schedule_jobs", "schedule", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    jobtable.configure(schedule=[EVERY_5, ["cmd:echo hi", "@daily"]])
    scheduler = Scheduler()
    now = clock.utcnow()
    scheduler.tick(now - timedelta(minutes=10))
    scheduler.tick(now - timedelta(minutes=5))  # runs the slot before that
    out = cli()
    header, *lines = out.splitlines()
    assert header.split() == ["job", "schedule", "time", "zone", "last", "run", "next", "run"]
    tick = next(line for line in lines if line.startswith("tests.schedule_jobs.Tick"))
    assert "*/5 * * * *" in tick and "UTC" in tick
    assert tick.count(str(now.year)) == 2  # a last run and a next run
    berlin = next(line for line in lines if line.startswith("tests.schedule_jobs.BerlinMorning"))
    job, cron, zone, last, following = re.split(r"\s{2,}", berlin)
    assert (cron, zone, last) == ("0 9 * * mon-fri", "Europe/Berlin", "-")  # never run
    assert following.endswith(("CET", "CEST"))
    assert any(line.startswith("cmd:echo hi") for line in lines)

    with get_engine().begin() as conn:
        schedules_sql.schedule_seed(conn, {"app.jobs.Gone [@daily]": None}, now)
    assert "1 ledger row(s) of entries that no longer exist" in cli()
    assert "Pruned the ledger row of removed entry 'app.jobs.Gone [@daily]'" in cli("--prune")
    assert "app.jobs.Gone" not in cli()
