"""Intervals cron cannot say (under a minute, 90 s, 7 minutes):
``Schedule.every`` on slots aligned on the epoch, each slot enqueued once
across schedulers (the ledger), and beat entries with ``schedule: 5.0`` or
``timedelta(seconds=10)`` taking them.  Time is passed to ``tick(now)``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from jobtable.cron import CronError
from jobtable.scheduler import Scheduler
from jobtable.scheduling import Interval, Schedule, load_schedule
from jobtable.shim import Celery, NotSupported, schedule
from jobtable.shim.schedules import to_schedule
from tests.conftest import ALL_DIALECTS

UTC = timezone.utc
T0 = datetime(2026, 11, 24, 9, 2, 3, 400000, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_leaked_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBTABLE_DATABASE_URL", raising=False)


def test_every_is_aligned_on_the_epoch() -> None:
    every5 = Schedule.every(5)
    assert every5.next(T0) == datetime(2026, 11, 24, 9, 2, 5, tzinfo=UTC)
    assert every5.latest(T0) == datetime(2026, 11, 24, 9, 2, 0, tzinfo=UTC)
    on_slot = datetime(2026, 11, 24, 9, 2, 5, tzinfo=UTC)
    assert every5.latest(on_slot) == on_slot  # at or before
    assert every5.previous(on_slot) == on_slot - timedelta(seconds=5)  # strictly before
    assert every5.next(on_slot) == on_slot + timedelta(seconds=5)  # strictly after
    assert Schedule.every(timedelta(seconds=90)).next(T0) == datetime(2026, 11, 24, 9, 3, 0, tzinfo=UTC)
    assert str(every5) == "every 5s" and every5 == Schedule.every(5.0) and every5 != Schedule.every(6)
    assert every5 != Schedule.from_cron("* * * * *")
    # In a time zone: the same instants, shown in it.
    berlin = Schedule.every(10, timezone="Europe/Berlin").next(T0)
    assert berlin == datetime(2026, 11, 24, 9, 2, 10, tzinfo=UTC) and berlin.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize("bad", [0, -5, 0.5, 2.5, float("nan"), float("inf"), True, "5", None, timedelta(0)])
def test_every_refuses_what_is_not_whole_seconds(bad: Any) -> None:
    with pytest.raises(CronError, match=r"Schedule\.every"):
        Schedule.every(bad)


@pytest.mark.dialects(*ALL_DIALECTS)
def test_each_second_slot_is_claimed_once_across_schedulers(db_url: str) -> None:
    items = [["tests.schedule_jobs.Tick", Schedule.every(1)], ["tests.schedule_jobs.Hourly", Schedule.every(7)]]
    first, second = Scheduler(load_schedule(items)), Scheduler(load_schedule(items))
    claimed: list[tuple[str, datetime]] = []
    now = T0
    for step in range(12):  # two schedulers, ticking at the same instants every 0.5 s
        now = T0 + timedelta(seconds=step / 2)
        for scheduler in (first, second):
            report = scheduler.tick(now)
            claimed += [(f.name, f.slot) for f in [*report.enqueued, *report.busy, *report.late]]
            assert not report.errors
    ticks = sorted(slot for name, slot in claimed if "Tick" in name)
    sevens = sorted(slot for name, slot in claimed if "Hourly" in name)
    # Slots after the first seen (9:02:03.4): :04 .. :08 for every 1 s, :07 for every 7 s.
    assert ticks == [datetime(2026, 11, 24, 9, 2, s, tzinfo=UTC) for s in range(4, 9)]
    assert sevens == [datetime(2026, 11, 24, 9, 2, 7, tzinfo=UTC)]
    assert first.seconds_until_due(now) <= 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5.0, Schedule.every(5)),
        (timedelta(seconds=10), Schedule.every(10)),
        (90, Schedule.every(90)),
        (schedule(run_every=timedelta(seconds=30)), Schedule.every(30)),
        (timedelta(minutes=15), Schedule.from_cron("*/15 * * * *")),  # cron still says what it can
    ],
)
def test_beat_intervals_under_a_minute_are_schedules(value: Any, expected: Schedule) -> None:
    result = to_schedule(value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("bad", [0, -1, 0.25, 1.5])
def test_beat_intervals_that_are_not_whole_seconds_are_refused(bad: Any) -> None:
    with pytest.raises(NotSupported, match="whole seconds, 1 or more"):
        to_schedule(bad)


def test_beat_entry_of_five_seconds_is_installed(db_url: str) -> None:
    import tests.shim_tasks  # noqa: F401  (defines tests.shim_tasks.add)
    from jobtable.settings import get_settings

    app = Celery("beat_seconds", set_as_current=False)
    app.conf.beat_schedule = {
        "five": {"task": "tests.shim_tasks.add", "schedule": 5.0, "args": (1, 2)},
        "ten": {"task": "tests.shim_tasks.add", "schedule": timedelta(seconds=10), "args": (3, 4)},
    }
    schedules = [when for _, when in get_settings().schedule]
    assert schedules == [Schedule.every(5), Schedule.every(10)]
    assert all(isinstance(when, Interval) for when in schedules)
    app.conf.beat_schedule = {}
