"""Property-based tests of cron parsing, at the public ``Schedule`` level
(the parser behind it may change; these must keep holding).

- Any string is either a Schedule or a ``CronError`` (a ``ValueError`` and a
  ``ConfigurationError``) naming the expression -- never another exception,
  and never "every minute" for an empty string.
- Generated valid expressions agree with croniter on the next fire times (in
  UTC: DST handling is cross-checked in tests/test_scheduling.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings, strategies as st

from jobtable.cron import CronError
from jobtable.exceptions import ConfigurationError
from jobtable.scheduling import Schedule

UTC = timezone.utc
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Characters cron expressions are made of, plus a few that are not.
CRONISH = st.text(alphabet="0123456789*/-, @LW#?abcdefghijklmnopqrstuvwxyz\t\n", max_size=40)


def _check_outcome(text: str) -> None:
    try:
        schedule = Schedule.from_cron(text)
    except CronError as exc:
        assert isinstance(exc, ValueError) and isinstance(exc, ConfigurationError)
        message = str(exc)
        assert repr(text) in message, message  # names the expression as written
        return
    # Parsed: it runs, and the next run is a whole minute after the start.
    start = datetime(2026, 5, 17, 13, 37, 12, tzinfo=UTC)
    run = schedule.next(start)
    assert run > start and run.second == 0 and run.microsecond == 0
    assert schedule.previous(run + timedelta(seconds=1)) == run
    assert text.split(), "a blank expression must not parse"


@PROPERTY
@given(st.text(max_size=60))
def test_any_text_is_a_schedule_or_a_named_error(text: str) -> None:
    _check_outcome(text)


@PROPERTY
@given(CRONISH)
def test_cron_like_text_is_a_schedule_or_a_named_error(text: str) -> None:
    _check_outcome(text)


@PROPERTY
@given(st.lists(CRONISH.filter(lambda t: " " not in t and t.strip()), min_size=5, max_size=5))
def test_five_fields_of_noise(fields: list[str]) -> None:
    _check_outcome(" ".join(fields))


@pytest.mark.parametrize("blank", ["", " ", "\t", " \n "])
def test_blank_is_an_error_not_every_minute(blank: str) -> None:
    with pytest.raises(CronError, match="it is empty"):
        Schedule.from_cron(blank)
    with pytest.raises(CronError, match="it is empty"):
        Schedule(raw=blank)


@pytest.mark.parametrize("value", [None, 0, 1.5, b"0 9 * * *", ["0", "9"], object()])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(CronError, match="cron string"):
        Schedule.from_cron(value)  # type: ignore[arg-type]


def test_huge_numbers_are_out_of_range_not_a_crash() -> None:
    with pytest.raises(CronError, match="out of range"):
        Schedule.from_cron("9" * 5000 + " * * * *")
    # A step longer than the field keeps only its first value, as */100 does.
    assert Schedule.from_cron("*/" + "7" * 5000 + " * * * *") == Schedule.from_cron("0 * * * *")


# -- agreement with croniter -------------------------------------------------------------------


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    step = st.integers(1, high - low + 1)

    @st.composite
    def ranged(draw: st.DrawFn) -> str:
        # a < b: croniter 7.0 reads a one-value range such as "5-5" as "*"
        # (every value), where cron (and jobtable) read 5.
        a, b = sorted(draw(st.lists(number, min_size=2, max_size=2, unique=True)))
        return f"{a}-{b}"

    @st.composite
    def ranged_step(draw: st.DrawFn) -> str:
        return f"{draw(ranged())}/{draw(step)}"

    item = st.one_of(number.map(str), ranged(), ranged_step())
    listed = st.lists(item, min_size=1, max_size=3).map(",".join)
    return st.one_of(st.just("*"), step.map(lambda n: f"*/{n}"), listed)


@st.composite
def expressions(draw: st.DrawFn) -> str:
    minute = draw(_field(0, 59))
    hour = draw(_field(0, 23))
    month = draw(_field(1, 12))
    # Day of month and day of week: both restricted (either matches), or one
    # of them exactly "*".  A "*/n" day field beside a restricted other one
    # is Vixie cron's "not restricted" rule, which croniter reads otherwise.
    dom = draw(_field(1, 28).filter(lambda f: not f.startswith("*/")))
    dow = draw(_field(0, 6).filter(lambda f: not f.startswith("*/")))
    return f"{minute} {hour} {dom} {month} {dow}"


@PROPERTY
@given(expressions(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)))
def test_generated_expressions_agree_with_croniter(expression: str, start: datetime) -> None:
    start = start.replace(tzinfo=UTC)
    schedule = Schedule.from_cron(expression, timezone="UTC")
    theirs = croniter(expression, start)
    t = start
    for _ in range(4):
        t = schedule.next(t)
        assert t == theirs.get_next(datetime).astimezone(UTC), expression
