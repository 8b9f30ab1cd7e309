"""Celery parity under a prefork Celery worker (issue 14): the same programs
with jobtable as broker and result backend (PostgreSQL) and with Redis as
both, under the same assertions.  Redis is the reference: whatever a test
asserts, it asserts of both.

Each backend gets one ``celery worker -P prefork -c 2`` for the module, on a
queue of its own (compat_tests/parity_app.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import chain, chord, group, states
from celery.exceptions import ChordError

from compat_tests.conftest import ROOT, empty_tables, lines, wait_for
from compat_tests.parity_app import REDIS_URL, make_app
from tests.polling import terminate

BACKENDS = ("jobtable", "redis")


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module", params=BACKENDS)
def parity(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kind = request.param
    # Not a skip: the reference must run, or parity is not checked at all
    # (scripts/test starts Redis when it is installed).
    assert kind != "redis" or _redis_up(), f"no Redis at {REDIS_URL}: start it (scripts/test does)"
    url = request.getfixturevalue("pg_url")
    empty_tables(url)
    queue = f"parity_{kind}_{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp(f"parity-{kind}")
    signals = tmp / "signals.log"
    env = dict(os.environ, PARITY_SIGNAL_LOG=str(signals), PARITY_BACKEND=kind, PARITY_QUEUE=queue, JOBTABLE_DATABASE_URL=url,
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log = tmp / "worker.log"
    cmd = [sys.executable, "-m", "celery", "-A", "compat_tests.parity_app", "worker", "-P", "prefork", "-c", "2",
           "-Q", queue, "-l", "info", "-n", f"parity-{kind}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    app = make_app(kind, queue, url)
    try:
        wait_for(lambda: proc.poll() is not None or " ready." in text(), timeout=90, what=f"{kind} worker up")
        assert proc.poll() is None, text()
        yield SimpleNamespace(kind=kind, app=app, signals=signals, t=SimpleNamespace(**{n.split(".")[1]: t for n, t in app.tasks.items()
                                                                         if n.startswith("parity.")}))
    finally:
        app.close()
        terminate(proc, timeout=30)
        print(f"--- {kind} worker log ---\n{text()[-6000:]}", file=sys.stderr)  # shown on failure


# -- 1. RETRY between self.retry(countdown=) and the next attempt ----------------------------


def test_retry_state_until_the_next_attempt(parity: Any, tmp_path: Path) -> None:
    path = tmp_path / "retry.log"
    sent = parity.t.retry_once.delay(str(path), 3)
    wait_for(lambda: len(lines(path)) == 1, what="first attempt")
    wait_for(lambda: sent.state != states.PENDING, what="state after the first attempt")
    assert sent.state == states.RETRY
    assert isinstance(sent.info, ConnectionError) and "first attempt failed" in str(sent.info)
    assert not sent.ready()
    assert sent.get(timeout=30) == 1
    assert sent.state == states.SUCCESS


# -- 2. custom states: update_state(state=..., meta=...) ------------------------------------------


@pytest.mark.parametrize("state", ["PROGRESS", "WAITING_FOR_THE_PAYMENT_PROVIDER"])
def test_custom_state_round_trips(parity: Any, tmp_path: Path, state: str) -> None:
    path, release = tmp_path / "progress.log", tmp_path / "release"
    sent = parity.t.progress.delay(state, str(path), str(release))
    try:
        wait_for(lambda: lines(path), what="update_state called")
        assert sent.state == state
        assert sent.info == {"done": 3}
        assert not sent.ready()
    finally:
        release.touch()  # a failed assertion must not keep a pool process busy
    assert sent.get(timeout=30) == "finished"
    assert sent.state == states.SUCCESS


# -- 9. task_track_started ---------------------------------------------------------------------------


def test_running_task_is_pending_without_track_started(parity: Any, tmp_path: Path) -> None:
    path, release = tmp_path / "hold.log", tmp_path / "release"
    untracked = parity.t.hold.delay(str(path), str(release))
    tracked = parity.t.hold_tracked.delay(str(path), str(release))
    try:
        wait_for(lambda: len(lines(path)) == 2, what="both running")
        # The app leaves task_track_started off: PENDING although its message
        # is claimed (acks_late) and it runs.
        assert untracked.state == states.PENDING
        wait_for(lambda: tracked.state != states.PENDING, what="tracked task's state")
        assert tracked.state == states.STARTED  # the task's own track_started=True
    finally:
        release.touch()
    assert untracked.get(timeout=30) == "released" and tracked.get(timeout=30) == "released"


# -- 3. chord errors ---------------------------------------------------------------------------------


def _failing(parity: Any, message: str = "header broke") -> tuple[Any, str]:
    sig = parity.t.fail.si(message)
    return sig, sig.freeze().id


def _chord_error(result: Any, culprit: str) -> ChordError:
    """The ChordError ``result`` ends with, naming ``culprit``.  (``get()``
    with propagate raises the failed header task's own exception first:
    Celery re-raises a failed parent's error before the result's.)"""
    error = result.get(timeout=30, propagate=False)
    assert isinstance(error, ChordError), repr(error)
    assert culprit in str(error), str(error)
    assert result.state == states.FAILURE
    return error


def test_failing_header_fails_the_body_and_calls_its_errbacks(parity: Any, tmp_path: Path) -> None:
    t, errors = parity.t, tmp_path / "errors.log"
    bad, bad_id = _failing(parity)
    body = t.tsum.s()
    body.link_error(t.record_error.s(str(errors)))
    result = chord([t.add.si(1, 1), bad, t.add.si(2, 2)], body).delay()
    _chord_error(result, bad_id)
    with pytest.raises(ValueError, match="header broke"):
        result.get(timeout=30)
    wait_for(lambda: lines(errors), what="the body's errback")
    assert [line[0] for line in lines(errors)] == [result.id]


def test_failing_header_fails_a_chained_chord_and_task(parity: Any) -> None:
    t = parity.t
    bad, bad_id = _failing(parity)
    after = chain(chord([t.add.si(1, 1), bad], t.tsum.s()), chord([t.add.si(2, 2)], t.tsum.si([5])), t.add.s(1))
    result = after.delay()
    _chord_error(result, bad_id)
    _chord_error(result.parent, bad_id)  # the second chord's body


def test_failing_header_fails_a_group_body(parity: Any) -> None:
    t = parity.t
    bad, _ = _failing(parity)
    result = chord([t.add.si(1, 1), bad], group(t.echo.si(1), t.echo.si(2))).delay()
    with pytest.raises(ValueError, match="header broke"):
        result.get(timeout=30)
    members = result.results
    assert len(members) == 2
    # get() raised with the first member's failure; the next is marked after it.
    wait_for(lambda: all(member.state == states.FAILURE for member in members), what="every member failed")
    assert all(isinstance(member.result, ValueError) for member in members)


def test_failing_body_of_an_inner_chord_fails_the_outer_chord(parity: Any) -> None:
    t = parity.t
    inner_body = t.fail.si("inner body broke")
    inner_id = inner_body.freeze().id
    inner = chord([t.add.si(1, 1), t.add.si(2, 2)], inner_body)
    result = chord([inner, t.add.si(3, 3)], t.tsum.s()).delay()
    _chord_error(result, inner_id)


def test_failing_header_of_a_nested_chord_body_fails_it(parity: Any) -> None:
    t = parity.t
    bad, bad_id = _failing(parity)
    inner = chord([t.add.si(1, 1), t.add.si(2, 2)], t.tsum.s())
    result = chord([bad, t.add.si(3, 3)], chain(t.echo.s(), inner)).delay()
    _chord_error(result, bad_id)


# -- 4. add_to_chord and replace in a chord header -------------------------------------------------


def test_add_to_chord_grows_the_count(parity: Any) -> None:
    t = parity.t
    result = chord([t.grow_chord.s(1), t.add.si(2, 0)], t.tsum.s()).delay()
    # 1 + 2 from the header, 1 + 100 from the task it added.
    assert result.get(timeout=30) == 104


def test_replace_in_a_chord_header(parity: Any) -> None:
    t = parity.t
    result = chord([t.replace_with.s(10), t.add.si(2, 0)], t.echo.s()).delay()
    values = result.get(timeout=30)
    assert sorted(map(str, values)) == sorted(map(str, [[11, 12], 2]))


# -- 5. generator headers ------------------------------------------------------------------------


def test_generator_chord_header_is_frozen_whole(parity: Any) -> None:
    # Celery freezes a generator header through itertools.tee: the results
    # must be taken (apply_chord) before the header is sent, or the tasks go
    # out without the ids and places the chord waits for.
    t = parity.t
    result = chord((t.add.s(i, i) for i in range(25)), t.echo.s())()
    assert result.get(timeout=30) == [2 * i for i in range(25)]
    assert chord(t.add.s(i, i) for i in range(25))(t.tsum.s()).get(timeout=30) == 600


def test_generator_group_in_a_chord(parity: Any) -> None:
    t = parity.t
    header = group(t.add.s(i, 1) for i in range(25))
    assert chord(header, t.echo.s()).delay().get(timeout=30) == [i + 1 for i in range(25)]
    assert group(t.add.s(i, 1) for i in range(25)).delay().get(timeout=30) == [i + 1 for i in range(25)]


# -- 6. revoking by stamped headers in a nested canvas -------------------------------------------


def test_stamped_header_revoke_reaches_every_member_of_a_nested_canvas(parity: Any) -> None:
    """Every sent member of a stamped canvas (a chain and a group inside a
    group) waits for its countdown, is revoked by its stamp meanwhile, and
    ends REVOKED without running; the chain's tail is never sent."""
    echo = parity.t.echo
    flow = f"flow-{uuid.uuid4().hex[:8]}"
    canvas = group(chain(echo.s("a"), echo.s("b")), group(echo.s("c"), echo.s("d")))
    canvas.stamp(flow=flow)
    sent = canvas.apply_async(countdown=3)
    parity.app.control.revoke_by_stamped_headers({"flow": [flow]})
    # Celery flattens the inner group into the outer one.
    chained, *flat = sent.results
    members = [chained.parent, *flat]
    assert len(members) == 3
    wait_for(lambda: all(m.state == states.REVOKED for m in members), timeout=60, what="every member revoked")
    assert chained.state == states.PENDING


# -- revokes: the task_revoked signal and REVOKED, terminate=True ------------------------------


def _signalled(parity: Any, task_id: str) -> list[list[str]]:
    """task_revoked signals the worker sent for ``task_id``: [name, terminated, signum, expired]."""
    return [line[1:] for line in lines(parity.signals) if line[0] == task_id]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_revoked_before_delivery_fires_task_revoked(parity: Any, tmp_path: Path) -> None:
    """A task revoked while it waits for its countdown is never run; the
    worker discards it with the task_revoked signal and records REVOKED
    (on jobtable the transport finds the stored revoke before delivery)."""
    path = tmp_path / "never.log"
    doomed = parity.t.hold_pid.apply_async((str(path), str(tmp_path / "release")), countdown=1.5)
    parity.app.control.revoke(doomed.id)
    wait_for(lambda: _signalled(parity, doomed.id), timeout=30, what="task_revoked signal")
    assert _signalled(parity, doomed.id) == [["parity.hold_pid", "False", "None", "False"]]
    wait_for(lambda: doomed.state == states.REVOKED, what="REVOKED")
    assert parity.t.add.delay(1, 1).get(timeout=30) == 2  # the worker went on
    assert not lines(path)


@pytest.mark.parametrize("in_chord", [False, True], ids=["task", "chord-member"])
def test_revoke_terminate_stops_a_running_task(parity: Any, tmp_path: Path, in_chord: bool) -> None:
    path, release = tmp_path / "hold.log", tmp_path / "release"
    running = parity.t.hold_pid.si(str(path), str(release))
    task_id = running.freeze().id
    if in_chord:
        result = chord([running, parity.t.add.si(1, 1)], parity.t.tsum.s()).delay()
    else:
        result = running.delay()
    try:
        wait_for(lambda: lines(path), what="the task running")
        pid = int(lines(path)[0][1])
        parity.app.control.revoke(task_id, terminate=True)
        wait_for(lambda: not _alive(pid), timeout=30, what="the pool process terminated")
        wait_for(lambda: parity.app.AsyncResult(task_id).state == states.REVOKED, what="REVOKED")
        wait_for(lambda: _signalled(parity, task_id), what="task_revoked signal")
        [[name, terminated, _signum, expired]] = _signalled(parity, task_id)
        assert (name, terminated, expired) == ("parity.hold_pid", "True", "False")
        if in_chord:
            # The revoked member fails the chord's body, naming it.
            _chord_error(result, task_id)
    finally:
        release.touch()
    assert [line[0] for line in lines(path)] == ["running"]


# -- 7. chains and groups in chord headers (issue 15; tests/test_shim_canvas_headers.py asserts the same
#       values of the shim) -------------------------------------------------------------------------


def test_chains_in_a_chord_header(parity: Any) -> None:
    t = parity.t
    header = [t.add.si(1, 1) | t.add.s(10), t.add.si(2, 2), t.add.si(3, 3) | t.add.s(1) | t.add.s(1)]
    result = chord(header, t.echo.s()).delay()
    assert result.get(timeout=30) == [12, 4, 8]
    assert result.parent.get(timeout=30) == [12, 4, 8]


def test_a_group_in_a_chord_header_is_flattened(parity: Any) -> None:
    # group._freeze_unroll's deque.extendleft reverses the inner group (jobtable/shim/canvas_shapes.py).
    t = parity.t
    header = [t.add.si(1, 0), group(t.add.si(2, 0), t.add.si(3, 0), t.add.si(4, 0)), t.add.si(5, 0)]
    result = chord(header, t.echo.s()).delay()
    assert result.get(timeout=30) == [1, 4, 3, 2, 5]
    assert len(result.parent) == 5


def test_a_group_of_chains_piped_to_a_task(parity: Any) -> None:
    t = parity.t
    result = (group(t.add.si(1, 1) | t.add.s(1), t.add.si(2, 2) | t.add.s(2)) | t.echo.s()).delay()
    assert result.get(timeout=30) == [3, 6]
    after = (t.add.si(1, 1) | group(t.add.s(1) | t.add.s(10), t.add.s(2)) | t.echo.s()).delay()
    assert after.get(timeout=30) == [13, 4]


def test_a_chain_in_a_chord_header_failing_mid_way(parity: Any) -> None:
    t = parity.t
    bad, bad_id = _failing(parity, "chain step broke")
    last = t.add.s(1)
    last_id = last.freeze().id
    result = chord([t.add.si(1, 1), bad | last, t.add.si(2, 2)], t.tsum.s()).delay()
    error = _chord_error(result, last_id)
    assert "chain step broke" in str(error)
    assert parity.app.AsyncResult(last_id).state == states.FAILURE


def test_an_empty_chain_in_a_chord_header(parity: Any) -> None:
    t = parity.t
    assert chord([chain(), t.add.si(1, 1)], t.echo.s()).delay().get(timeout=30) == [2]
