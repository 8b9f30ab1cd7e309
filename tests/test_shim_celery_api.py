"""Celery API the shim used to refuse, now with Celery's names, arguments and
semantics, on a real native worker: ``task.map/starmap/chunks``,
``link_error=`` / ``on_error()``, ``self.update_state()`` (custom states
read by ``AsyncResult.info`` and the dashboard), and ``jobtable list``
showing the shim's tasks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobtable.db import tables
from jobtable.shim import AsyncResult, GroupResult, NotSupported, chain, chord, group, states
from jobtable.shim.errbacks import takes_request
from tests import shim_tasks as t
from tests.conftest import ALL_DIALECTS
from tests.polling import wait_for
from tests.shim_support import run_burst, start_worker
from tests.worker_jobs import ROOT, requests, results, stop, worker_env

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- map / starmap / chunks ------------------------------------------------------


def test_map_and_starmap_are_one_message_each(db_url: str, subprocess_env: dict[str, str]) -> None:
    mapped = t.double.map([1, 2, 3]).delay()
    starred = t.add.starmap([(1, 2), (3, 4)]).apply_async()
    rows = requests()
    assert [r.task_name for r in rows] == ["celery.map", "celery.starmap"]
    # Routed by the mapped task's name, as Celery's route_name does.
    assert {r.queue for r in rows} == {"celery"}
    run_burst(subprocess_env)
    assert mapped.get(timeout=10) == [2, 4, 6]
    assert starred.get(timeout=10) == [3, 7]


def test_chunks_is_a_group_of_starmaps(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = t.add.chunks([(i, i) for i in range(5)], 2).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 3
    assert [r.task_name for r in requests()] == ["celery.starmap"] * 3
    run_burst(subprocess_env)
    assert result.get(timeout=10) == [[0, 2], [4, 6], [8]]


def test_map_routes_to_the_mapped_tasks_queue(db_url: str) -> None:
    t.whoami.map(["a"]).delay()
    [row] = requests()
    assert row.task_name == "celery.map" and row.queue == "other"


def test_maps_run_eagerly(db_url: str) -> None:
    assert t.double.map([5]).apply().get() == [10]
    assert t.add.starmap([(2, 3)]).apply().get() == [5]
    assert t.add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply().get() == [[2, 4], [6]]


@pytest.mark.parametrize("n", [0, -1, 1.5, math.inf, math.nan, True, "2", None])
def test_chunks_refuses_a_bad_size(n: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"n must be a whole number of items per chunk, 1 or more"):
        t.add.chunks([(1, 1)], n)


@pytest.mark.parametrize("it", ["abc", b"ab", 5, None])
def test_map_refuses_what_is_not_a_list_of_items(it: Any) -> None:
    with pytest.raises(TypeError, match=r"it= must be a list"):
        t.double.map(it)


def test_map_of_an_item_that_json_cannot_hold_fails_when_sent(db_url: str) -> None:
    with pytest.raises(TypeError, match=r"celery.map"):
        t.echo.map([object()]).delay()
    assert requests() == []


# -- link_error / on_error ------------------------------------------------------------


def test_link_error_new_and_old_style(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "errbacks.log"
    failed = t.boom.apply_async(
        ("bad input",), link_error=[t.errback_new.s(str(log)), t.errback_old.s(str(log))]
    )
    assert failed is not None
    ok = t.add.s(1, 2).on_error(t.errback_new.s(str(log))).delay()
    run_burst(subprocess_env)
    with pytest.raises(ValueError, match="bad input"):
        failed.get(timeout=10)
    assert ok.get(timeout=10) == 3
    lines = _lines(log)
    new = [line for line in lines if line.startswith("new ")]
    old = [line for line in lines if line.startswith("old ")]
    # New style: called in the worker with (request, exc, traceback); old style: a task, the id first.
    assert len(new) == 1 and new[0].startswith(f"new {failed.id} ValueError: bad input tb=True"), lines
    assert old == [f"old {failed.id} parent={failed.id}"], lines
    sent = [r for r in results() if r.task_name == "tests.shim_tasks.errback_old"]
    assert len(sent) == 1 and sent[0].status == tables.SUCCESSFUL


def test_link_error_of_a_chain_step_and_a_chord_body(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "errbacks.log"
    chained = chain(t.add.s(1, 1), t.boom.si("second step")).on_error(t.errback_old.s(str(log))).apply_async()
    body = t.total.s().on_error(t.errback_old.s(str(log)))
    chorded = chord([t.add.s(1, 1), t.boom.si("part")], body).apply_async()
    assert chained is not None and chorded is not None
    run_burst(subprocess_env)
    with pytest.raises(ValueError):
        chained.get(timeout=10)
    assert chorded.state == states.FAILURE
    lines = _lines(log)
    # The failed chain step's id; the chord's body (its ChordError), as Celery's chord_error_from_stack.
    assert f"old {chained.id} parent={chained.id}" in lines, lines
    assert f"old {chorded.id} parent={chorded.id}" in lines, lines
    assert len(lines) == 2, lines


def test_link_error_runs_eagerly(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "errbacks.log"
    result = t.boom.apply(("eager",), link_error=[t.errback_new.s(str(log)), t.errback_old.s(str(log))])
    assert result.state == states.FAILURE
    lines = _lines(log)
    assert lines[0].startswith(f"new {result.id} ValueError: eager") and lines[1] == f"old {result.id} parent={result.id}"


def test_group_link_error_gives_each_member_an_immutable_copy() -> None:
    g = group(t.add.s(1, 1), t.add.s(2, 2))
    g.link_error(t.errback_old.s("x"))
    for member in g.tasks:
        [errback] = member.options["link_error"]
        assert errback.immutable and errback.args == ("x",)


@pytest.mark.parametrize("bad", [None, "tests.shim_tasks.add", 5, {"nope": 1}])
def test_link_error_refuses_what_is_not_a_signature(db_url: str, bad: Any) -> None:
    with pytest.raises(TypeError, match=r"link_error"):
        t.add.s(1, 2).link_error(bad)
    if bad is not None:
        with pytest.raises(TypeError, match=r"link_error= takes signatures"):
            t.add.apply_async((1, 2), link_error=bad)
    assert requests() == []


def test_errback_styles_follow_celerys_arity_rule() -> None:
    assert takes_request(t.errback_new)  # a function of more than one positional argument
    assert not takes_request(t.errback_old)  # bind=True
    assert not takes_request(t.double)  # one argument: the task id


# -- update_state -------------------------------------------------------------------------


@pytest.mark.dialects("sqlite", "postgresql")
def test_update_state_is_read_while_the_task_runs(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    result = t.progress.delay(str(gate))
    assert result is not None
    proc = start_worker(subprocess_env, "--max-processes", "1")
    try:
        wait_for(lambda: result.state == "PROGRESS", timeout=30)
        assert result.info == {"done": 3, "total": 10} and not result.ready()
        shown = _dashboard_request(result.id)
        assert "status-progress\">PROGRESS</span>" in shown and "&#34;done&#34;: 3" in shown, shown
        gate.write_text("go")
        assert result.get(timeout=30) == "finished"
    finally:
        out = stop(proc)
    assert result.state == states.SUCCESS and result.info == "finished", out
    # One row for the attempt: its final state replaced the custom one.
    assert [(r.attempt, r.status) for r in results(result.id)] == [(1, tables.SUCCESSFUL)]


def _dashboard_request(task_id: str) -> str:
    from tests.dashboard_client import client

    [row] = [r for r in requests() if r.task_id == task_id]
    page = client().get(f"/requests/{row.id}")
    assert page.status_code == 200
    return page.text


@pytest.mark.parametrize(
    ("state", "error"),
    [
        (None, TypeError),
        (5, TypeError),
        ("", ValueError),
        ("   ", ValueError),
        ("\udc80", TypeError),
        ("SUCCESS", NotSupported),
        ("FAILURE", NotSupported),
    ],
)
def test_update_state_refuses_bad_states(state: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"update_state"):
        t.progress.update_state(state=state, meta={})


@pytest.mark.parametrize("meta", [object(), {"x": "\udc80"}, {1: 2}])
def test_update_state_refuses_meta_json_cannot_hold(meta: Any) -> None:
    with pytest.raises(TypeError, match=r"update_state\(meta=\.\.\.\)"):
        t.progress.update_state(state="PROGRESS", meta=meta)


def test_update_state_of_another_task_is_refused() -> None:
    with pytest.raises(NotSupported, match="another task"):
        t.progress.update_state(task_id="someone-else", state="PROGRESS")


def test_update_state_in_eager_mode_is_a_no_op(db_url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.write_text("open")
    assert t.progress.apply((str(gate),)).get() == "finished"
    assert results() == []


# -- jobtable list ----------------------------------------------------------------------------


def test_list_shows_shim_tasks_with_their_queue(db_url: str, subprocess_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobtable", "--app", "tests.shim_tasks", "list"],
        env=worker_env(subprocess_env),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line.startswith(("tests.", "shim."))}
    assert rows["tests.shim_tasks.add"] == "celery"
    assert rows["shim.whoami"] == "other"
    assert "celery.map" not in done.stdout and "Tasks (jobtable.shim):" in done.stdout


# -- add_to_chord -------------------------------------------------------------------------------


def test_add_to_chord_adds_a_part_whose_value_comes_last(db_url: str, subprocess_env: dict[str, str]) -> None:
    result = chord([t.grow.s(1), t.add.s(2, 2)], t.echo.s()).apply_async()
    run_burst(subprocess_env)
    assert result.get(timeout=10) == [1, 4, 101]


def test_add_to_chord_outside_a_chord_is_an_error(db_url: str, subprocess_env: dict[str, str]) -> None:
    alone = t.grow.delay(5)
    run_burst(subprocess_env)
    with pytest.raises(ValueError, match="not member of any chord"):
        alone.get(timeout=10)
    with pytest.raises(NotSupported, match="lazy=True"):
        t.grow.add_to_chord(t.add.s(1, 1), lazy=True)


# -- interval schedules where the CLI and the dashboard show schedules ---------------------------


def test_interval_entries_on_the_schedules_page(db_url: str) -> None:
    from jobtable.shim import Celery
    from tests.dashboard_client import client

    app = Celery("beat_page", set_as_current=False)
    app.conf.beat_schedule = {"five": {"task": "tests.shim_tasks.add", "schedule": 5.0, "args": (1, 2)}}
    try:
        page = client().get("/schedules")
    finally:
        app.conf.beat_schedule = {}
    assert page.status_code == 200
    assert "every 5s" in page.text and "tests.shim_tasks.add" in page.text, page.text


# -- hostile custom states ------------------------------------------------------------------


def _store_for_waiting(meta: Any, state: str) -> Any:
    """A custom state for a task that waits (the row a running task writes)."""
    from jobtable.shim import progress
    from jobtable.shim.context import Context

    sent = t.echo.delay(1)
    assert sent is not None
    request = Context(id=sent.id, task=t.echo.name, called_directly=False, is_eager=False, retries=0)
    progress.store(request, t.echo.name, None, state, meta)
    return sent


@pytest.mark.dialects("sqlite", "postgresql")
def test_custom_states_are_escaped_on_the_dashboard(db_url: str) -> None:
    sent = _store_for_waiting({"html": "<b>bold</b>", "nul": "a\x00b", "inf": math.inf}, "<script>x</script>")
    assert sent.state == "<script>x</script>"
    assert sent.info["html"] == "<b>bold</b>" and sent.info["nul"] == "a\x00b" and sent.info["inf"] == math.inf
    page = _dashboard_request(sent.id)
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page


@pytest.mark.dialects("sqlite")
def test_custom_state_meta_over_the_message_size_is_refused(db_url: str) -> None:
    import jobtable

    jobtable.configure(database_url=db_url, max_message_size=2048)
    with pytest.raises(ValueError, match=r"update_state\(meta=\.\.\.\) is .* over max_message_size"):
        _store_for_waiting({"blob": "x" * 5000}, "PROGRESS")


# -- Task.replace ----------------------------------------------------------------------------------


def test_replace_gives_the_task_the_replacements_value(db_url: str, subprocess_env: dict[str, str]) -> None:
    one = t.replaced.delay(1)
    chained = t.replaced.delay(5, chained=True)
    followed = chain(t.replaced.s(10), t.double.s()).apply_async()  # what followed moves to the replacement
    part = chord([t.replaced.s(100), t.add.s(1, 1)], t.echo.s()).apply_async()
    assert one is not None and chained is not None and followed is not None and part is not None
    run_burst(subprocess_env)
    assert one.get(timeout=10) == 2 and one.state == states.SUCCESS
    assert chained.get(timeout=10) == 12
    assert followed.get(timeout=10) == 22
    assert part.get(timeout=10) == [101, 2]
    # The replaced attempt ends without a value of its own; the replacement is the next attempt of the id.
    assert [(r.attempt, r.task_name, r.status) for r in results(one.id)] == [
        (1, "tests.shim_tasks.replaced", tables.ERRORED),
        (2, "tests.shim_tasks.add", tables.SUCCESSFUL),
    ]


def test_replace_eagerly_returns_the_value(db_url: str) -> None:
    assert t.replaced.apply((3,)).get() == 4
    assert t.replaced.apply((3,), {"chained": True}).get() == 8
    with pytest.raises(NotSupported, match="replace"):
        t.replaced.replace(group(t.add.s(1, 1)))
    with pytest.raises(RuntimeError, match="called directly"):
        t.replaced.replace(t.add.s(1, 1))
