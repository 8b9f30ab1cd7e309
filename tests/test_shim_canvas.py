"""chain, group and chord on the native worker (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from jobtable.db import tables
from jobtable.shim import AsyncResult, ChordError, GroupResult, NotSupported, chain, chord, group, states
from tests import shim_tasks as t
from tests.conftest import ALL_DIALECTS
from tests.shim_support import run_burst
from tests.worker_jobs import requests, results

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def _bodies(name: str = "tests.shim_tasks.total") -> list[object]:
    return [r for r in results() if r.task_name == name]


def test_chain_passes_each_result_on(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chain(t.add.s(1, 2), t.add.s(3), t.add.si(10, 10), t.add.s(5)).apply_async()
    assert result is not None
    # Only the first step is queued; it carries the rest, as in Celery.
    [first] = requests()
    embed = json.loads(json.loads(first.message)["body"])[2]
    assert [step["task"] for step in embed["chain"]] == ["tests.shim_tasks.add"] * 3
    run_burst(subprocess_env)
    assert result.get(timeout=10) == 25
    assert result.parent.get(timeout=1) == 20 and result.parent.parent.get(timeout=1) == 6
    rows = results()
    assert len(rows) == 4 and {r.status for r in rows} == {tables.SUCCESSFUL}
    root = rows[0].task_id
    for previous, row in zip(rows, rows[1:]):
        headers = json.loads(row.message)["headers"]
        assert headers["parent_id"] == previous.task_id and headers["root_id"] == root


def test_pipe_and_chain_args(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = (t.add.s(1) | t.add.s(100)).delay(2)
    assert result is not None
    run_burst(subprocess_env)
    assert result.get(timeout=10) == 103


def test_failed_chain_step_stops_the_chain(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chain(t.boom.si("first"), t.add.s(1)).apply_async()
    assert result is not None
    run_burst(subprocess_env)
    with pytest.raises(ValueError, match="first"):
        result.get(timeout=10)  # the failed parent raises; this step never runs
    assert result.state == states.PENDING and len(results()) == 1


def test_group_results_in_order(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = group(t.add.s(i, i) for i in range(10)).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 10
    headers = [json.loads(r.message)["headers"] for r in requests()]
    assert {h["group"] for h in headers} == {result.id} and [h["group_index"] for h in headers] == list(range(10))
    run_burst(subprocess_env, "--max-processes", "2")
    assert result.get(timeout=10) == [i * 2 for i in range(10)]
    assert result.ready() and result.successful() and result.completed_count() == 10
    result.save()
    restored = GroupResult.restore(str(result.id))
    assert restored is not None and [r.id for r in restored] == [r.id for r in result]


def test_chord_sends_the_body_once_with_every_value(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chord(t.add.s(i, i) for i in range(30))(t.total.s())
    assert result is not None
    # Two processes finishing parts in batches: exactly one part sends the body.
    run_burst(subprocess_env, "--max-processes", "2")
    assert result.get(timeout=10) == sum(i * 2 for i in range(30))
    assert len(_bodies()) == 1
    assert isinstance(result.parent, GroupResult) and result.parent.get(timeout=1) == [i * 2 for i in range(30)]
    assert requests() == []


def test_chord_body_can_be_a_chain(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chord([t.add.s(1, 1), t.add.s(2, 2)], chain(t.total.s(), t.add.s(1000))).apply_async()
    assert result is not None
    run_burst(subprocess_env)
    assert result.get(timeout=10) == 1006


def test_chord_with_a_failed_part_fails_its_body(db_url: str, subprocess_env: dict[str, str]) -> None:
    broken = t.boom.si("part broke")
    broken_id = broken.freeze().id
    header = [t.add.s(1, 1), broken, t.add.s(2, 2)]
    result = chord(header)(t.total.s())
    assert result is not None
    run_burst(subprocess_env)
    # As Celery's (compat_tests/test_parity.py): the error names the failed part.
    with pytest.raises(ChordError, match=f"Dependency {broken_id} raised .*part broke"):
        result.get(timeout=10)
    assert result.state == states.FAILURE
    assert _bodies() == [r for r in results() if r.task_id == result.id]  # recorded, never run
    assert [r.started_at for r in _bodies()] == [None]


def test_empty_chord_calls_the_body_at_once(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chord([])(t.total.s())
    run_burst(subprocess_env)
    assert AsyncResult(result.id).get(timeout=10) == 0


def test_canvas_shapes_that_are_not_supported(db_url: str) -> None:
    # Chains and groups in a header are supported (test_shim_canvas_headers.py); a chord is not.
    with pytest.raises(NotSupported, match="chord in a chord header"):
        chord([chord([t.add.s(1, 1)], t.total.s())])
    assert requests() == []


def test_a_chain_that_starts_with_a_group_is_a_chord(db_url: str, subprocess_env: dict[str, str]) -> None:
    """As Celery upgrades it: chain(group, b, c) runs b on the group's values, then c."""
    built = chain(group(t.add.s(1, 1), t.add.s(2, 2)), t.total.s(), t.add.s(100))
    assert isinstance(built, chord)
    piped = chord([t.add.s(5, 5)], t.total.s()) | t.add.s(1)  # chord | task: after the body
    result, other = built.apply_async(), piped.apply_async()
    run_burst(subprocess_env)
    assert result.get(timeout=10) == 106
    assert other.get(timeout=10) == 11


def test_groups_inside_chains(db_url: str, subprocess_env: dict[str, str]) -> None:
    """As Celery: a group after a step gets its value; a group followed by
    more steps is a chord whose body is the rest."""
    ends = chain(t.add.s(1, 1), group(t.add.s(10), t.add.s(20))).apply_async()
    middle = (t.add.s(1, 1) | group(t.add.s(10), t.add.s(20)) | t.total.s() | t.add.s(1000)).apply_async()
    assert isinstance(ends, GroupResult) and len(requests()) == 2  # the first steps only
    run_burst(subprocess_env)
    assert ends.get(timeout=10) == [12, 22]
    assert ends.parent.get(timeout=1) == 2
    assert middle.get(timeout=10) == 1034
    # Eager: the same values.
    assert chain(t.add.s(1, 1), group(t.add.s(10), t.add.s(20))).apply().get() == [12, 22]
    assert chain(t.add.s(1, 1), group(t.add.s(10), t.add.s(20)), t.total.s()).apply().get() == 34


def test_a_group_of_groups_is_one_flat_group(db_url: str, subprocess_env: dict[str, str]) -> None:
    """Celery unrolls nested groups: one GroupResult, one flat list."""
    result = group(group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)).apply_async()
    assert len(result) == 3 and len(requests()) == 3
    run_burst(subprocess_env)
    assert result.get(timeout=10) == [2, 4, 6]


def test_a_chord_inside_a_group(db_url: str, subprocess_env: dict[str, str]) -> None:
    """As Celery: a chord is one member of the group, its value the body's;
    sent with the group, its counter row in the same transaction."""
    result = group(t.add.s(1, 1), chord([t.add.s(2, 2), t.add.s(3, 3)], t.total.s()), t.add.s(4, 4)).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 3
    assert len(requests()) == 4  # two plain members and the chord's header; the body waits
    run_burst(subprocess_env, "--max-processes", "2")
    assert result.get(timeout=10) == [2, 10, 8]
    assert len(_bodies()) == 1
    assert group(t.add.s(1, 1), chord([t.add.s(2, 2)], t.total.s())).apply().get() == [2, 4]  # eager
