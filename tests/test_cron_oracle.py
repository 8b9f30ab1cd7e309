"""The croniter-based ``jobtable.cron`` against the hand-written matcher it
replaced (a frozen copy in tests/cron_oracle.py): on generated expressions
both accept and refuse the same ones with the same message, expand to the
same values, and find the same next and previous minutes.

One deliberate difference: the old matcher read ``7/n`` in the day of week
as nothing at all (a range from 7 down to 6), so such a schedule never ran;
now it is ``sun/n``.  Those expressions are left out of the comparison and
checked on their own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from jobtable.cron import FIELDS, CronError, CronExpression, _Field
from tests import cron_oracle

PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _number(spec: _Field) -> st.SearchStrategy[str]:
    values = st.integers(spec.low, spec.high).map(str)
    names = st.sampled_from(sorted(spec.names)) if spec.names else values
    # Now and then a value out of range, to compare the errors.
    return st.one_of(values, values, names, st.sampled_from([str(spec.high + 1), str(max(spec.low - 1, 0))]))


@st.composite
def _item(draw: st.DrawFn, spec: _Field) -> str:
    step = draw(st.sampled_from(["", "", "/1", "/2", "/3", "/5", "/7", "/15", "/40"]))
    kind = draw(st.sampled_from(["star", "value", "range", "same", "range"]))
    if kind == "star":
        return "*" + step
    first = draw(_number(spec))
    if kind == "value":
        return first + step
    if kind == "same":
        # "5-5": the range of one that croniter 7 reads as "*".
        return f"{first}-{first}{step}"
    return f"{first}-{draw(_number(spec))}{step}"


@st.composite
def expressions(draw: st.DrawFn) -> str:
    fields = []
    for spec in FIELDS:
        items = draw(st.lists(_item(spec), min_size=1, max_size=3))
        fields.append(",".join(items))
    return " ".join(fields)


def _parse_old(text: str) -> object:
    try:
        return cron_oracle.CronExpression.parse(text)
    except cron_oracle.CronError as exc:
        return ("error", str(exc))


def _parse_new(text: str) -> object:
    try:
        return CronExpression.parse(text)
    except CronError as exc:
        return ("error", str(exc))


starts = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 12, 31))


@PROPERTY
@given(expressions(), st.lists(starts, min_size=1, max_size=3))
@example("1-1,3 * * * *", [datetime(2026, 3, 1, 0, 0, 30)])
@example("3-3/2 * * * *", [datetime(2026, 3, 1, 0, 0)])
@example("0 0 13 * mon-sun", [datetime(2026, 3, 1)])
@example("0 0 5-5/2 * *", [datetime(2026, 3, 1)])
@example("*/60 */24 */31 */12 */7", [datetime(2026, 3, 1)])
@example("0 0 29 2 1", [datetime(2026, 3, 1)])
def test_same_as_the_old_matcher(text: str, when: list[datetime]) -> None:
    old = _parse_old(text)
    new = _parse_new(text)
    if isinstance(old, tuple):
        assert new == old
        return
    assert isinstance(old, cron_oracle.CronExpression)
    assume(old.weekdays or not old.days)  # the "7/n" difference (module docstring)
    assert isinstance(new, CronExpression), new
    for name in ("minutes", "hours", "days", "months", "weekdays", "day_or"):
        assert getattr(new, name) == getattr(old, name), name
    for start in when:
        assert new.next_after(start) == old.next_after(start), ("next", start)
        assert new.previous_before(start) == old.previous_before(start), ("previous", start)
        # From a matching minute itself: strictly after, strictly before.
        hit = old.next_after(start)
        assert new.next_after(hit) == old.next_after(hit)
        assert new.previous_before(hit) == old.previous_before(hit)


@pytest.mark.parametrize("text", ["0 0 * * 7/2", "0 0 * * sun/2", "0 0 * * 0/2"])
def test_seven_with_a_step_is_sunday_with_a_step(text: str) -> None:
    cron = CronExpression.parse(text)
    assert cron.weekdays == frozenset({0, 2, 4, 6})
    assert cron.next_after(datetime(2026, 3, 2)) == datetime(2026, 3, 3)  # Monday -> Tuesday


def test_ranges_of_one_are_one_value() -> None:
    # The croniter 7 misreading worked around in jobtable/cron.py.
    assert CronExpression.parse("5-5 * * * *").minutes == (5,)
    assert CronExpression.parse("1-1,3 * * * *").minutes == (1, 3)
    assert CronExpression.parse("3-3/2 * * * *").minutes == (3,)
    assert CronExpression.parse("5-5 * * * *").next_after(datetime(2026, 1, 1, 0, 6)) == datetime(2026, 1, 1, 1, 5)


def test_croniter_extensions_are_refused_naming_the_field() -> None:
    for text, mentions in [
        ("H * * * *", "minute field 'H'"),
        ("0 0 L * *", "Quartz"),
        ("0 0 * * 1#2", "Quartz"),
        ("0 22-2 * * *", "goes backwards"),
        ("0 0 9 * * *", "6 field(s)"),
        ("R * * * *", "minute field 'R'"),
    ]:
        with pytest.raises(CronError, match="e.g.") as info:
            CronExpression.parse(text)
        assert mentions in str(info.value)


def test_far_apart_runs_are_found() -> None:
    cron = CronExpression.parse("0 0 29 2 *")
    assert cron.next_after(datetime(2097, 3, 1)) == datetime(2104, 2, 29)  # 2100 is not a leap year
    assert cron.previous_before(datetime(2104, 2, 1)) == datetime(2096, 2, 29)
    assert CronExpression.parse("0 0 1 1 *").previous_before(datetime(2026, 1, 1) + timedelta(seconds=1)) == datetime(
        2026, 1, 1
    )
