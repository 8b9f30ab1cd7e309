"""Chains and groups inside chord headers, groups of chains (issue 15), on the
native worker (SQLite, PostgreSQL, MySQL) and eagerly.

The values asserted here are those a real Celery worker gives for the same
canvases: compat_tests/test_parity.py (section 7) asserts them of Celery on
the jobtable transport and on Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from jobtable.db import tables
from jobtable.shim import AsyncResult, Celery, ChordError, NotSupported, chain, chord, group, states
from jobtable.shim.canvas_shapes import MAX_CANVAS_DEPTH
from tests import shim_tasks as t
from tests.conftest import ALL_DIALECTS
from tests.shim_support import run_burst
from tests.worker_jobs import requests, results

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


@pytest.fixture
def eager() -> Iterator[Celery]:
    app = t.app
    saved = dict(app.conf)
    app.conf.task_always_eager = True
    yield app
    for key, value in saved.items():
        app.conf._data[key] = value


def _bodies(name: str = "tests.shim_tasks.echo") -> list[object]:
    return [r for r in results() if r.task_name == name]


def _message(row: object) -> tuple[dict[str, object], dict[str, object]]:
    envelope = json.loads(row.message)  # type: ignore[attr-defined]
    return envelope["headers"], json.loads(envelope["body"])[2]


def _chains_header() -> list[object]:
    return [t.add.si(1, 1) | t.add.s(10), t.add.si(2, 2), t.add.si(3, 3) | t.add.s(1) | t.add.s(1)]


def test_chains_in_a_chord_header(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chord(_chains_header(), t.echo.s()).apply_async()
    # One row per member: a chain's first step, which is not counted (no
    # group, no chord); its last step carries both, in its options.
    firsts = [(h, e) for h, e in map(_message, requests()) if e.get("chain")]
    assert len(requests()) == 3 and len(firsts) == 2
    for headers, embed in firsts:
        assert headers["group"] is None and embed["chord"] is None
        last = embed["chain"][0]["options"]  # the chain is kept reversed: its last step first
        assert last["group_id"] == result.parent.id and last["chord"]["task"] == "tests.shim_tasks.echo"
    run_burst(subprocess_env, "--max-processes", "2")
    assert result.get(timeout=10) == [12, 4, 8]
    assert result.parent.get(timeout=10) == [12, 4, 8]
    # A chain member's result is its last step's.
    def steps_before(node: object) -> int:
        return 0 if getattr(node, "parent", None) is None else 1 + steps_before(node.parent)  # type: ignore[attr-defined]

    assert [steps_before(r) for r in result.parent] == [1, 0, 2]
    assert [r.parent.get(timeout=1) for r in result.parent if r.parent] == [2, 7]
    assert len(_bodies()) == 1 and requests() == []
    assert len(results()) == 7  # 2 + 1 + 3 header steps and the body, each once


def test_chains_in_a_chord_header_eagerly(eager: Celery) -> None:
    assert chord(_chains_header(), t.echo.s()).apply_async().get() == [12, 4, 8]
    assert chord(_chains_header())(t.total.s()).get() == 24


def test_a_group_in_a_chord_header_unrolls_as_celery_does(db_url: str, subprocess_env: dict[str, str]) -> None:
    """Celery's worker unrolls an inner group through a deque's extendleft:
    its members come out reversed (canvas_shapes.py); eager keeps them in order."""

    def header() -> list[object]:
        return [t.add.si(1, 0), group(t.add.si(2, 0), t.add.si(3, 0), t.add.si(4, 0)), t.add.si(5, 0)]

    as_list = chord(header(), t.echo.s()).apply_async()
    as_group = chord(group(header()), t.echo.s()).apply_async()
    piped = (group(header()) | t.echo.s()).apply_async()
    assert len(as_list.parent) == 5 and len(requests()) == 15
    run_burst(subprocess_env, "--max-processes", "2")
    for result in (as_list, as_group, piped):
        assert result.get(timeout=10) == [1, 4, 3, 2, 5]
        assert result.parent.get(timeout=10) == [1, 4, 3, 2, 5]
    assert chord(header(), t.echo.s()).apply().get() == [1, 2, 3, 4, 5]
    # A group sent on its own is not frozen: in order, as Celery's.
    sent = group(header()).apply_async()
    run_burst(subprocess_env)
    assert sent.get(timeout=10) == [1, 2, 3, 4, 5]


def test_a_group_of_chains_piped_to_a_task(db_url: str, subprocess_env: dict[str, str]) -> None:
    piped = (group(t.add.si(1, 1) | t.add.s(1), t.add.si(2, 2) | t.add.s(2)) | t.echo.s()).apply_async()
    after = (t.add.si(1, 1) | group(t.add.s(1) | t.add.s(10), t.add.s(2)) | t.echo.s()).apply_async()
    ends = (t.add.si(1, 1) | group(t.add.s(1) | t.add.s(10), t.add.s(2))).apply_async()
    led = chain(group(t.add.si(1, 1) | t.add.s(1), t.add.si(2, 2)), t.total.s(), t.add.s(100)).apply_async()
    run_burst(subprocess_env, "--max-processes", "2")
    assert led.get(timeout=10) == 107
    assert piped.get(timeout=10) == [3, 6]
    assert after.get(timeout=10) == [13, 4]
    assert ends.get(timeout=10) == [13, 4]
    assert len(_bodies()) == 2
    # Eager: the same values.
    assert (t.add.si(1, 1) | group(t.add.s(1) | t.add.s(10), t.add.s(2)) | t.echo.s()).apply().get() == [13, 4]


def test_a_chain_failing_mid_way_fails_the_chord(db_url: str, subprocess_env: dict[str, str]) -> None:
    """As Celery (mark_as_failure): the chain's later step that ends the
    member is recorded FAILED and counted, so the body gets a ChordError
    naming it, and is never run."""
    last = t.add.s(1)
    last_id = last.freeze().id
    result = chord([t.add.si(1, 1), t.boom.si("chain step broke") | t.add.s(5) | last, t.add.si(2, 2)], t.total.s())()
    run_burst(subprocess_env)
    with pytest.raises(ChordError, match=f"Dependency {last_id} raised .*chain step broke"):
        result.get(timeout=10)
    assert AsyncResult(last_id).state == states.FAILURE
    with pytest.raises(ValueError, match="chain step broke"):
        AsyncResult(last_id).get(timeout=1)
    assert [r.started_at for r in results() if r.task_id in (last_id, result.id)] == [None, None]
    ran = [r for r in results() if r.task_name == "tests.shim_tasks.add" and r.task_id != last_id]
    assert len(ran) == 2 and {r.status for r in ran} == {tables.SUCCESSFUL}  # the step after boom never ran
    assert requests() == []


def test_empty_chains_in_a_chord_header_are_no_members(db_url: str, subprocess_env: dict[str, str]) -> None:
    mixed = chord([chain(), t.add.si(1, 1), chain()], t.echo.s()).apply_async()
    only = chord([chain()], t.echo.s()).apply_async()
    assert len(mixed.parent) == 1
    run_burst(subprocess_env)
    assert mixed.get(timeout=10) == [2]
    assert AsyncResult(only.id).get(timeout=10) == []
    assert chord([chain(), t.add.si(1, 1)], t.echo.s()).apply().get() == [2]


def test_a_header_of_500_chains(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chord([t.add.si(i, 0) | t.add.s(1) for i in range(500)], t.total.s()).apply_async()
    assert len(requests()) == 500
    run_burst(subprocess_env, "--max-processes", "2", timeout=240)
    assert result.get(timeout=10) == sum(i + 1 for i in range(500))
    assert len(_bodies("tests.shim_tasks.total")) == 1
    assert result.parent.get(timeout=10) == [i + 1 for i in range(500)]


def _nested(levels: int) -> object:
    """``levels`` chords, each one's body a chain ending in the next: 2 canvas levels each."""
    sig: object = t.add.s(1)
    for _ in range(levels):
        sig = chord([t.add.si(1, 1)], chain(t.total.s(), sig))
    return sig


def test_nesting_depth_limit(db_url: str, subprocess_env: dict[str, str]) -> None:
    deepest = MAX_CANVAS_DEPTH // 2
    result = _nested(deepest).apply_async()  # type: ignore[attr-defined]
    run_burst(subprocess_env)
    assert result.get(timeout=10) == 3
    with pytest.raises(NotSupported, match=f"nested {MAX_CANVAS_DEPTH + 1} levels deep.*MAX_CANVAS_DEPTH = {MAX_CANVAS_DEPTH}"):
        chain(t.add.s(1), _nested(deepest))
    inner: object = t.add.si(1, 1)
    with pytest.raises(NotSupported, match="MAX_CANVAS_DEPTH"):
        for _ in range(MAX_CANVAS_DEPTH + 1):
            inner = group(inner, t.add.si(2, 2))
    assert requests() == []


def test_header_shapes_still_refused(db_url: str) -> None:
    with pytest.raises(NotSupported, match="chord in a chord header"):
        chord([chord([t.add.s(1, 1)], t.total.s())], t.total.s())
    with pytest.raises(NotSupported, match="chain holding a group in a chord header"):
        chord([t.add.si(1, 1) | group(t.add.s(1), t.add.s(2))], t.total.s())
    with pytest.raises(NotSupported, match="chain holding a chord inside a group that follows a chain step"):
        t.add.si(1, 1) | group(t.add.s(1) | chord([t.add.s(1)], t.total.s()), t.add.s(2))
    with pytest.raises(TypeError, match="chord header holds signatures"):
        chord([t.add.si(1, 1), 3], t.total.s())
    assert requests() == []


def test_unroll_orders_are_celerys_own() -> None:
    """The shim's two orders of a nested header, against Celery 5.7's own
    canvas code on the same shape (freeze: a worker's order; _prepared: eager's)."""
    import celery

    capp = celery.Celery("unroll_check", set_as_current=False)

    @capp.task(name="unroll.add")
    def add(x: int, y: int) -> int:
        return x + y

    def shape(s: object, grp: object) -> list[object]:
        g = grp  # type: Any
        return [s(1), g(s(2), g(s(3), s(4), g(s(5), s(6))), s(7)), s(8), g(s(9), g(s(10)))]

    theirs = celery.group(shape(lambda i: add.si(i, 0), lambda *m: celery.group(*m, app=capp)), app=capp)
    theirs.freeze()
    frozen = [sig.args[0] for sig in theirs.tasks]
    prepared = [task.args[0] for task, _, _ in theirs._prepared(
        celery.group(shape(lambda i: add.si(i, 0), lambda *m: celery.group(*m, app=capp)), app=capp).tasks,
        [], "gid", None, capp, freeze=False)]
    ours = chord(shape(lambda i: t.add.si(i, 0), group), t.echo.s())
    assert [s.args[0] for s in ours.tasks] == frozen
    assert [s.args[0] for s in ours._eager_tasks()] == prepared == list(range(1, 11))
    assert frozen != prepared
