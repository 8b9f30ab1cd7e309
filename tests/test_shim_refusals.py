"""The Celery-free shim's refusals and edge cases, through ``jobtable.shim``
only: each unsupported apply_async option and canvas shape raises
NotSupported naming it and the alternative, bad arguments raise before any
row is written, and accepted-but-ignored options still enqueue."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from jobtable import messages
from jobtable.exceptions import EnqueueError, ParameterError
from jobtable.shim import NotSupported, chain, chord, group, signature
from tests import shim_tasks as t
from tests.worker_jobs import requests

SQLITE = pytest.mark.parametrize("dialect", ["sqlite"])  # refusals come before the database

UNSUPPORTED = [
    ("connection", object(), "run_in_worker(connection=...)"),
    ("producer", object(), "there is no producer"),
    ("publisher", object(), "there is no publisher"),
    ("router", object(), "Route with queue="),
    ("exchange", "ex", "Route with queue="),
    ("routing_key", "rk", "a routing key is the queue name"),
    ("compression", "gzip", "uncompressed"),
    ("chord", "c", "Use chord(header)(body)"),
    ("replaced_task_nesting", 1, "Task.replace() is not supported"),
    ("stamped_headers", ["a"], "Stamping is not supported"),
    ("serializer", "pickle", "use 'json'"),
    ("no_such_option", 1, "Supported options: countdown, eta"),
]


@SQLITE
@pytest.mark.parametrize(("option", "value", "alternative"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_each_unsupported_option_is_refused_with_its_alternative(
    db_url: str, option: str, value: Any, alternative: str
) -> None:
    with pytest.raises(NotSupported, match=rf"apply_async\({option}=") as info:
        t.add.apply_async((1, 2), **{option: value})
    assert alternative in str(info.value), str(info.value)
    assert requests() == []


@SQLITE
def test_ignored_options_still_enqueue(db_url: str) -> None:
    sent = t.add.apply_async((1, 2), retry=True, retry_policy={"max_retries": 3}, ignore_result=True,
                             serializer="json", mandatory=True, delivery_mode=2, add_to_parent=False,
                             exchange_type="direct", connection=None)
    assert sent is not None
    assert [(r.task_id, r.task_name) for r in requests()] == [(sent.id, "tests.shim_tasks.add")]


BAD_TIMES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"countdown": "10"}, ParameterError, "countdown='10': pass a number of seconds"),
    ({"countdown": True}, ParameterError, "countdown=True: pass a number of seconds"),
    ({"countdown": math.nan}, EnqueueError, "countdown=nan is not a number of seconds"),
    ({"countdown": 1e300}, EnqueueError, "is out of range: the time it gives falls outside years 1-9999"),
    ({"countdown": 10**400}, EnqueueError, "is out of range"),
    ({"expires": -math.inf}, EnqueueError, "is out of range"),
    ({"eta": "tomorrow"}, ParameterError, "eta='tomorrow': pass a datetime"),
    ({"headers": ["concurrency_key"]}, EnqueueError, "headers= must be a dict, not list"),
    ({"priority": 10**6}, EnqueueError, "priority"),
]


@SQLITE
@pytest.mark.parametrize(("options", "error", "message"), BAD_TIMES, ids=[repr(b[0])[:40] for b in BAD_TIMES])
def test_bad_option_values_are_refused_before_any_row(
    db_url: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        t.add.apply_async((1, 2), **options)
    assert message in str(info.value), str(info.value)
    assert requests() == []


@SQLITE
@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [("ab", {}, "args must be a list or tuple, got str"), (5, {}, "args must be a list or tuple, got int"),
     ((), [1], "kwargs must be a dict, got list")],
)
def test_bad_arguments_are_type_errors(db_url: str, args: Any, kwargs: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        t.add.apply_async(args, kwargs)
    assert requests() == []


@SQLITE
def test_an_unstorable_argument_names_it(db_url: str) -> None:
    with pytest.raises(ParameterError, match="tests.shim_tasks.echo argument 0") as info:
        t.echo.apply_async((object(),))
    assert "Traceback" not in str(info.value)
    assert requests() == []


@SQLITE
def test_times_in_the_past_and_naive_datetimes(db_url: str) -> None:
    """A countdown in the past runs now; a naive eta is UTC (Celery's
    enable_utc); an expiry in the past is stored as expired."""
    now = datetime.now(timezone.utc)
    past = t.add.apply_async((1, 1), countdown=-30)
    naive_eta = (now + timedelta(hours=1)).replace(tzinfo=None)
    later = t.add.apply_async((1, 2), eta=naive_eta)
    expired = t.add.apply_async((1, 3), expires=-5)
    assert past and later and expired
    rows = {r.task_id: r for r in requests()}
    assert rows[past.id].state == "pending"
    assert rows[later.id].state == "scheduled"
    assert abs((rows[later.id].run_at - naive_eta.replace(tzinfo=timezone.utc)).total_seconds()) < 1
    assert rows[expired.id].expires_at < now


@SQLITE
def test_routes_pick_the_queue(db_url: str) -> None:
    """queue= wins, then task_routes: a glob dict, then a callable router."""
    saved = t.app.conf.task_routes
    try:
        t.app.conf.task_routes = [
            lambda name, args, kwargs, options, task=None: {"queue": "by-router"} if name.endswith(".echo") else None,
            {"tests.shim_tasks.a*": "by-glob"},
        ]
        by_glob = t.add.delay(1, 2)
        by_router = t.echo.delay("x")
        explicit = t.add.apply_async((1, 2), queue="explicit")
    finally:
        t.app.conf.task_routes = saved
    assert by_glob and by_router and explicit
    queues = {r.task_id: r.queue for r in requests()}
    assert (queues[by_glob.id], queues[by_router.id], queues[explicit.id]) == ("by-glob", "by-router", "explicit")


@SQLITE
def test_concurrency_key_from_headers_and_link_callbacks(db_url: str) -> None:
    first = t.add.apply_async((1, 2), headers={"concurrency_key": "k1", "x-trace": "abc"}, link=t.echo.s("after"))
    duplicate = t.add.apply_async((3, 4), headers={"concurrency_key": "k1"})
    assert first is not None and duplicate is None  # the key is taken
    (row,) = requests()
    assert row.concurrency_key == "k1"
    envelope = messages.loads(row.message) if hasattr(messages, "loads") else __import__("json").loads(row.message)
    assert envelope["headers"]["x-trace"] == "abc" and "concurrency_key" not in envelope["headers"].get("x-trace", "")
    assert row.message.count("tests.shim_tasks.echo") == 1  # the link travels in the body's callbacks


# -- canvas ---------------------------------------------------------------------------------

CANVAS_REFUSALS = [
    (
        lambda: chain(t.add.s(1, 1), group(t.add.s(1), chord([t.add.s(1, 1)], t.total.s()))),
        "a chord inside a group that follows a chain step",
    ),
    # Chains (of tasks) in a group after a chain step, and in a chord header, are
    # supported (tests/test_shim_canvas_headers.py); one holding a chord or group is not.
    (
        lambda: t.add.s(1, 1) | group(chain(t.add.s(1), chord([t.add.s(2)], t.total.s())), t.add.s(3)),
        "a chain holding a chord inside a group that follows",
    ),
    (lambda: group(t.add.s(1, 1)) | group(t.add.s(2, 2)), r"group \| \(group or chord\)"),
    (lambda: chord([chain(t.add.s(1, 1), group(t.add.s(2), t.add.s(3)))], t.total.s()), "in a chord header"),
    (lambda: chord([chord([t.add.s(1, 1)], t.total.s())], t.total.s()), "a chord in a chord header"),
    (lambda: chord([t.add.s(1, 1)], group(t.total.s())), "a group or chord as chord body"),
    (lambda: signature({"task": "tests.shim_tasks.add"}), r"signature\(dict\)"),
    (lambda: t.add.s(1, 2).stamp(), "signature stamping"),
    (lambda: chain(t.add.s(1, 1), t.add.s(2)).apply_async(queue="q"), r"chain.apply_async\(queue=...\)"),
    (lambda: group(t.add.s(1, 1)).apply_async(countdown=1), r"group.apply_async\(countdown=...\)"),
    (lambda: chord([t.add.s(1, 1)])(t.total.s(), priority=3), r"chord.apply_async\(priority=...\)"),
]


@SQLITE
@pytest.mark.parametrize(("build", "what"), CANVAS_REFUSALS, ids=[c[1][:30] for c in CANVAS_REFUSALS])
def test_unsupported_canvas_shapes_are_refused(db_url: str, build: Any, what: str) -> None:
    with pytest.raises(NotSupported, match=what):
        build()
    assert requests() == []


@SQLITE
@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: chain(t.add.s(1, 1), "tests.shim_tasks.add"), TypeError, r"chain\(\) takes signatures"),
        (lambda: group(t.add.s(1, 1), 42), TypeError, r"group\(\) takes signatures"),
        (lambda: chain().apply_async(), ValueError, r"chain\(\) needs at least one task"),
        (lambda: chord([t.add.s(1, 1)]).apply_async(), ValueError, r"chord\(\) needs a body"),
    ],
    ids=["chain-of-a-string", "group-of-a-number", "empty-chain", "chord-without-body"],
)
def test_bad_canvas_arguments(db_url: str, build: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build()
    assert requests() == []


@SQLITE
def test_signature_copies_and_links(db_url: str) -> None:
    original = t.add.s(1, 2)
    copy = signature(original)
    assert copy == original and copy is not original
    callback = t.echo.s("after")
    assert original.link(callback) is callback
    sent = original.apply_async()
    assert sent is not None
    (row,) = requests()
    assert row.task_id == sent.id and row.message.count("tests.shim_tasks.echo") == 1
