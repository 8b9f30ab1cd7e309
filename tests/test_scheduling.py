"""Schedule: cron parsing, slot computation (cross-checked against croniter,
across DST changes), and the entries that give jobs a schedule."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import jobtable
from jobtable import settings
from jobtable.cron import CronError, CronExpression
from jobtable.exceptions import ConfigurationError
from jobtable.scheduling import (
    CommandFailed,
    Schedule,
    ScheduledCommand,
    class_entries,
    load_schedule,
    schedule_entries,
)
from tests.schedule_jobs import BerlinMorning, Report, Tick

UTC = timezone.utc


@pytest.fixture(autouse=True)
def _fresh_settings() -> object:
    settings.reset()
    yield
    settings.reset()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "field", "values"),
    [
        ("*/15 * * * *", "minutes", (0, 15, 30, 45)),
        ("5-59/15 * * * *", "minutes", (5, 20, 35, 50)),
        ("10/20 * * * *", "minutes", (10, 30, 50)),
        ("1,2,5-7 * * * *", "minutes", (1, 2, 5, 6, 7)),
        ("0 */6 * * *", "hours", (0, 6, 12, 18)),
        ("0 0 */2 * *", "days", frozenset(range(1, 32, 2))),
        ("0 0 1 jan-mar/2 *", "months", (1, 3)),
        ("0 0 1 JAN,Dec *", "months", (1, 12)),
        ("0 0 * * mon-fri", "weekdays", frozenset({1, 2, 3, 4, 5})),
        ("0 0 * * 5-7", "weekdays", frozenset({5, 6, 0})),
        ("0 0 * * 7", "weekdays", frozenset({0})),
        ("0 0 * * */2", "weekdays", frozenset({0, 2, 4, 6})),
        ("0 0 * * sat-sun", "weekdays", frozenset({6, 0})),
        ("0 0 * * mon-sun", "weekdays", frozenset(range(7))),
    ],
)
def test_fields(expression: str, field: str, values: object) -> None:
    assert getattr(CronExpression.parse(expression), field) == values


@pytest.mark.parametrize(
    ("alias", "cron"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_aliases(alias: str, cron: str) -> None:
    start = utc(2026, 11, 24, 2, 15)
    assert Schedule.from_cron(alias).next(start) == Schedule.from_cron(cron).next(start)
    assert str(Schedule.from_cron(alias)) == alias


def test_day_of_month_or_day_of_week() -> None:
    # Both restricted: the 13th and every Friday.
    runs = _series(Schedule.from_cron("0 0 13 * 5"), utc(2026, 1, 1), 4)
    assert [r.day for r in runs] == [2, 9, 13, 16]
    # Day of month starts with *: it does not count as restricted (Vixie cron).
    runs = _series(Schedule.from_cron("0 0 */2 * 1"), utc(2026, 1, 1), 3)
    assert all(r.isoweekday() == 1 and r.day % 2 == 1 for r in runs)
    # One field restricted: that one decides.
    runs = _series(Schedule.from_cron("0 0 * * 5"), utc(2026, 1, 1), 3)
    assert all(r.isoweekday() == 5 for r in runs)


def test_leap_day() -> None:
    runs = _series(Schedule.from_cron("0 0 29 2 *"), utc(2026, 1, 1), 3)
    assert [r.year for r in runs] == [2028, 2032, 2036]
    assert Schedule.from_cron("0 0 29 2 *").previous(utc(2026, 1, 1)) == utc(2024, 2, 29)


@pytest.mark.parametrize(
    ("expression", "mentions"),
    [
        ("0 9 * *", ["4 field(s), not 5"]),
        ("0 0 9 * * *", ["6 field(s)", "seconds"]),
        ("60 * * * *", ["minute field", "60", "0-59"]),
        ("0 24 * * *", ["hour field", "24", "0-23"]),
        ("0 0 0 * *", ["day of month field", "1-31"]),
        ("0 0 1 13 *", ["month field", "13", "1-12"]),
        ("0 0 * * 8", ["day of week field", "8", "0-7"]),
        ("0 0 * foo *", ["month field", "'foo'", "names: jan"]),
        ("*/0 * * * *", ["minute field", "step"]),
        ("*/x * * * *", ["step"]),
        ("0 22-2 * * *", ["goes backwards", "22-23,0-2"]),
        ("0 0 L * *", ["Quartz", "use * or explicit"]),
        ("0 0 ? * *", ["Quartz"]),
        ("0 0 * * 1#2", ["Quartz"]),
        ("1,,2 * * * *", ["empty list item"]),
        ("@reboot", ["@reboot is not supported", "@daily"]),
        ("0 0 30 2 *", ["never runs", "Feb"]),
        ("0 0 31 4,6 *", ["never runs"]),
    ],
)
def test_bad_expressions_explain_themselves(expression: str, mentions: list[str]) -> None:
    with pytest.raises(CronError) as info:
        Schedule.from_cron(expression)
    message = str(info.value)
    assert repr(expression) in message
    for text in mentions:
        assert text in message, (text, message)
    assert "e.g." in message  # every message shows a fix
    assert isinstance(info.value, ConfigurationError)


def test_keyword_constructor_like_plain() -> None:
    schedule = Schedule(minute="0", hour="9", day_of_week="mon-fri")
    assert str(schedule) == "0 9 * * mon-fri"
    assert schedule == Schedule.from_cron("0 9 * * 1-5")
    assert schedule != Schedule.from_cron("0 9 * * 1-5", timezone="Europe/Berlin")


def test_naive_datetimes_and_unknown_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        Schedule.from_cron("@daily").next(datetime(2026, 1, 1))
    with pytest.raises(ConfigurationError, match="Unknown time zone 'Mars/Olympus'"):
        Schedule.from_cron("@daily", timezone="Mars/Olympus")
    # A bad zone setting is refused where it is set, not at the first tick.
    with pytest.raises(ConfigurationError, match="schedule_timezone='Europe/Berln'.*not a time zone"):
        jobtable.configure(schedule_timezone="Europe/Berln")


def test_time_zone_setting_is_read_when_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = Schedule.from_cron("0 9 * * *")  # defined before the setting changes
    assert schedule.next(utc(2026, 11, 24)) == utc(2026, 11, 24, 9)
    monkeypatch.setenv("JOBTABLE_SCHEDULE_TIMEZONE", "America/New_York")
    settings.reset()
    assert schedule.next(utc(2026, 11, 24)) == utc(2026, 11, 24, 14)


# -- cross-check against croniter ----------------------------------------------------------

EXPRESSIONS = [
    "* * * * *",
    "*/5 * * * *",
    "5-59/15 * * * *",
    "10/20 * * * *",
    "0 * * * *",
    "30 * * * *",
    "15,45 * * * *",
    "0 */2 * * *",
    "0 */3 * * *",
    "30 1 * * *",
    "30 2 * * *",
    "0 2 * * *",
    "59 1 * * *",
    "0 3 * * *",
    "15 2,3 * * *",
    "*/20 1-3 * * *",
    "0 0 * * *",
    "0 9 * * *",
    "45 23 * * *",
    "0 9 * * 1-5",
    "0 9 * * mon-fri",
    "0 0 * * 0",
    "0 0 * * 7",
    "0 12 * * sat,sun",
    "0 0 1 * *",
    "0 0 15 * *",
    "0 0 31 * *",
    "0 0 */2 * *",
    "0 0 1-31/3 * *",
    "0 0 13 * 5",
    "0 0 1,15 * 1",
    "0 0 */2 * 1",
    "0 0 * */3 *",
    "0 0 1 1 *",
    "0 0 29 2 *",
    "0 0 1 jan-mar/2 *",
    "30 4 1-7 * 1",
    "0 22 * * 1-5",
    "*/10 9-17 * * 1-5",
    "0 6,18 * * *",
    "0 0 28-31 * *",
    "7 7 7 7 *",
    "0 12 * 3,10 0",
    "*/30 * 29 3 *",
    "*/30 * 25 10 *",
    "0 1-3 * * 0",
]

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]

# DST changes of 2026, and around them: where schedules are most likely wrong.
TRANSITIONS = {
    "UTC": [],
    "Europe/Berlin": [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)],
    "America/New_York": [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6)],
    "Australia/Lord_Howe": [utc(2026, 4, 4, 15), utc(2026, 10, 3, 15, 30)],  # 30-minute shifts
}


def _starts(zone: str) -> list[datetime]:
    rng = random.Random(f"starts-{zone}")
    starts = [utc(2020, 1, 1) + timedelta(seconds=rng.randrange(11 * 365 * 86400)) for _ in range(12)]
    for transition in TRANSITIONS[zone]:
        for hours in (-26, -3, -1.5, -0.75, -0.25, 0, 0.5, 1, 2):
            starts.append(transition + timedelta(hours=hours))
    return starts


def _series(schedule: Schedule, start: datetime, n: int, backwards: bool = False) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = schedule.previous(t) if backwards else schedule.next(t)
        out.append(t)
    return out


def _croniter_next(expression: str, tz: ZoneInfo, start: datetime, n: int) -> list[datetime]:
    cron = CronExpression.parse(expression)
    it = croniter(expression, start.astimezone(tz), day_or=cron.day_or)
    out: list[datetime] = []
    while len(out) < n:
        value = it.get_next(datetime).astimezone(UTC)
        # The one documented difference: croniter runs a fixed-time wall
        # time that occurs twice (fall back) twice; jobtable once.
        if value.astimezone(tz).fold == 1 and not cron.every_hour:
            continue
        if out and value <= out[-1]:
            continue  # several wall times in a spring-forward gap run once
        out.append(value)
    return out


def _croniter_series(expression: str, tz: ZoneInfo, start: datetime, n: int, ours: list[datetime]) -> list[datetime]:
    """croniter's view of the runs ``ours`` should be.

    Backwards, croniter's own get_prev() is not consistent with its
    get_next() around the half-hour DST shifts of Lord Howe Island, so
    previous() is checked against croniter's forward series instead: from
    just before our n-th previous run, every run up to ``start``.
    """
    if ours and ours[0] < start:  # backwards
        forward = _croniter_next(expression, tz, ours[-1] - timedelta(microseconds=1), n + 1)
        return sorted((t for t in forward if t < start), reverse=True)[:n]
    return _croniter_next(expression, tz, start, n)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("backwards", [False, True], ids=["next", "previous"])
def test_matches_croniter(zone: str, backwards: bool) -> None:
    tz = ZoneInfo(zone)
    mismatches = []
    for expression in EXPRESSIONS:
        schedule = Schedule.from_cron(expression, timezone=zone)
        for start in _starts(zone):
            ours = [t.astimezone(UTC) for t in _series(schedule, start, 6, backwards)]
            theirs = _croniter_series(expression, tz, start, 6, ours)
            if ours != theirs:
                mismatches.append((expression, start.isoformat(), ours, theirs))
    assert not mismatches, mismatches[:3]


def _random_field(rng: random.Random, low: int, high: int) -> str:
    a, b = sorted(rng.sample(range(low, high + 1), 2))
    return rng.choice(
        [
            "*",
            f"*/{rng.randint(2, max(2, (high - low) // 2))}",
            str(a),
            f"{a}-{b}",
            f"{a}-{b}/{rng.randint(2, 4)}",
            f"{a}/{rng.randint(2, 9)}",
            ",".join(str(v) for v in sorted(rng.sample(range(low, high + 1), 3))),
        ]
    )


def _random_expressions(count: int) -> list[str]:
    rng = random.Random("cron")
    out: list[str] = []
    while len(out) < count:
        bounds = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
        expression = " ".join(_random_field(rng, low, high) for low, high in bounds)
        try:
            CronExpression.parse(expression)
        except CronError:
            continue  # e.g. "0 0 31 2 *", which never runs
        out.append(expression)
    return out


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_random_expressions_match_croniter(zone: str) -> None:
    tz = ZoneInfo(zone)
    rng = random.Random(f"random-{zone}")
    mismatches = []
    for expression in _random_expressions(250):
        schedule = Schedule.from_cron(expression, timezone=zone)
        for _ in range(3):
            start = utc(2020, 1, 1) + timedelta(seconds=rng.randrange(11 * 365 * 86400))
            for backwards in (False, True):
                ours = [t.astimezone(UTC) for t in _series(schedule, start, 4, backwards)]
                theirs = _croniter_series(expression, tz, start, 4, ours)
                if ours != theirs:
                    mismatches.append((expression, start.isoformat(), backwards, ours, theirs))
    assert not mismatches, mismatches[:3]


# -- DST semantics, spelled out -----------------------------------------------------------

BERLIN = "Europe/Berlin"


def test_spring_forward_gap_runs_when_the_gap_ends() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    schedule = Schedule.from_cron("30 2 * * *", timezone=BERLIN)
    runs = _series(schedule, utc(2026, 3, 28, 12), 3)
    assert [r.isoformat() for r in runs] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # Every half hour: 02:00 and 02:30 fold into 03:00, which runs once.
    runs = _series(Schedule.from_cron("*/30 * * * *", timezone=BERLIN), utc(2026, 3, 29, 0), 3)
    assert [r.strftime("%H:%M%z") for r in runs] == ["01:30+0100", "03:00+0200", "03:30+0200"]


def test_fall_back_repeated_hour() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice.
    daily = Schedule.from_cron("30 2 * * *", timezone=BERLIN)
    runs = _series(daily, utc(2026, 10, 24, 12), 2)
    assert [r.isoformat() for r in runs] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    # An every-hour schedule follows the clock through both 02:xx hours.
    hourly = Schedule.from_cron("0 * * * *", timezone=BERLIN)
    runs = _series(hourly, utc(2026, 10, 24, 22, 30), 4)
    assert [r.astimezone(UTC).strftime("%H:%M") for r in runs] == ["23:00", "00:00", "01:00", "02:00"]
    # previous() is the exact mirror of next().
    assert _series(hourly, runs[-1], 3, backwards=True) == runs[-2::-1]


def test_next_and_previous_are_inverse_around_transitions() -> None:
    for expression in ("*/20 * * * *", "30 2 * * *", "0 1-3 * * *"):
        schedule = Schedule.from_cron(expression, timezone=BERLIN)
        for t in _series(schedule, utc(2026, 10, 24, 20), 12) + _series(schedule, utc(2026, 3, 28, 20), 12):
            assert schedule.previous(schedule.next(t)) == t
            assert schedule.next(schedule.previous(t)) == t
            assert schedule.latest(t) == t


# -- entries -----------------------------------------------------------------------------------


@pytest.fixture
def scheduled_classes() -> Iterator[None]:
    from tests.schedule_jobs import scheduled_classes

    with scheduled_classes():
        yield


def test_schedule_class_attribute(scheduled_classes: None) -> None:
    names = {entry.name: entry for entry in class_entries()}
    assert "tests.schedule_jobs.Nightly [0 3 * * *]" in names
    berlin = names["tests.schedule_jobs.BerlinMorning [0 9 * * mon-fri (Europe/Berlin)]"]
    assert isinstance(berlin.job, BerlinMorning)
    assert berlin.schedule.next(utc(2026, 11, 24, 12)) == utc(2026, 11, 25, 8)


def test_jobtable_schedule_setting_forms() -> None:
    entries = load_schedule(
        [
            ["tests.schedule_jobs.Tick", "*/5 * * * *"],
            (Report("weekly", days=7), Schedule.from_cron("@weekly")),
            ("cmd:echo hello", "@hourly"),
            ["tests.schedule_jobs.Tick", Schedule.from_cron("0 9 * * *", timezone="America/New_York")],
        ]
    )
    assert [e.name for e in entries] == [
        "tests.schedule_jobs.Tick [*/5 * * * *]",
        'tests.schedule_jobs.Report("weekly", days=7) [@weekly]',
        "cmd:echo hello [@hourly]",
        "tests.schedule_jobs.Tick [0 9 * * * (America/New_York)]",
    ]
    assert isinstance(entries[0].job, Tick)
    assert isinstance(entries[2].job, ScheduledCommand) and entries[2].job.command == "echo hello"


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch, scheduled_classes: None) -> None:
    monkeypatch.setenv("JOBTABLE_SCHEDULE", '[["tests.schedule_jobs.Tick", "@daily"], ["cmd:date", "0 * * * *"]]')
    settings.reset()
    names = [e.name for e in schedule_entries()]
    assert names[:2] == ["tests.schedule_jobs.Tick [@daily]", "cmd:date [0 * * * *]"]
    assert "tests.schedule_jobs.Nightly [0 3 * * *]" in names  # class attributes too


def test_duplicate_entries_are_one(scheduled_classes: None) -> None:
    entries = schedule_entries([["tests.schedule_jobs.Nightly", "0 3 * * *"]])
    assert [e.name for e in entries].count("tests.schedule_jobs.Nightly [0 3 * * *]") == 1


def test_long_names_fit_the_ledger() -> None:
    (entry,) = load_schedule([(Report("x" * 400), "@daily")])
    assert len(entry.name) == 255


@pytest.mark.parametrize(
    ("item", "mentions"),
    [
        ("tests.schedule_jobs.Tick", "[job, schedule] pairs"),
        (["tests.schedule_jobs.Nope", "@daily"], "cannot import"),
        (["tests.schedule_jobs.Schedule", "@daily"], "not a Job class"),
        (["tests.schedule_jobs.Report", "@daily"], "needs arguments"),
        (["tests.schedule_jobs.Tick", "0 9 * *"], "entry for 'tests.schedule_jobs.Tick'"),
        (["cmd:", "@daily"], "needs a shell command"),
        ([42, "@daily"], "dotted path, 'cmd:...', or a Job instance"),
        (["tests.schedule_jobs.Tick", 5], "cron string or a Schedule"),
    ],
)
def test_bad_entries_explain_themselves(item: object, mentions: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_schedule([item])
    assert mentions in str(info.value)


# -- shell commands -------------------------------------------------------------------------


def test_command_runs_and_records_output() -> None:
    jobtable.configure(schedule=[["cmd:echo out; echo err >&2", "@daily"]])
    result = ScheduledCommand("echo out; echo err >&2").run()
    assert result == {"command": "echo out; echo err >&2", "exit_status": 0, "output": "out\nerr\n"}


def test_failing_command_fails_the_job_with_its_output() -> None:
    jobtable.configure(schedule=[["cmd:echo broken; exit 3", "@daily"]])
    with pytest.raises(CommandFailed, match="exited with status 3: broken"):
        ScheduledCommand("echo broken; exit 3").run()


def test_only_configured_commands_run() -> None:
    # A row written to the queue must not make workers run arbitrary commands.
    jobtable.configure(schedule=[["cmd:echo allowed", "@daily"]])
    with pytest.raises(PermissionError, match="not a 'cmd:' entry"):
        ScheduledCommand("echo not allowed").run()


def test_a_broken_entry_does_not_stop_configured_commands() -> None:
    jobtable.configure(schedule=[["cmd:echo ok", "@daily"], ["no.such.Job", "@daily"]])
    assert ScheduledCommand("echo ok").run()["output"] == "ok\n"
