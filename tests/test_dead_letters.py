"""Undecodable request rows become dead letters, whoever consumes them; the
good messages around them are delivered; dead letters are shown and retried."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from jobtable import badrows, messages
from jobtable.cli import main
from jobtable.db import tables

from .dashboard_client import client
from .dead_letter_support import BAD_MESSAGES, assert_one_dead_letter_each, insert_all_bad, insert_bad, requests, results
from .transport_helpers import acked, connect
from .worker_jobs import Add, run_burst, worker_env
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_simple_queue_gets_the_good_messages_and_dead_letters_the_bad(db_url: str) -> None:
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("poison")
        queue.put({"good": 1})
        bad = insert_all_bad(db_url, "poison")
        queue.put({"good": 2})
        got = [queue.get(timeout=5) for _ in range(2)]
        assert [m.payload for m in got] == [{"good": 1}, {"good": 2}]
        for message in got:
            message.ack()
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)
        queue.close()
    assert acked(db_url) == []  # nothing left running or pending
    assert_one_dead_letter_each(db_url, bad)
    reasons = {r.task_id: r.error_message for r in results(db_url)}
    assert "is not JSON" in reasons["bad-not-json"]
    assert "not an object" in reasons["bad-array"]
    assert "no 'body'" in reasons["bad-no-body"]
    assert "'headers'" in reasons["bad-headers"]
    assert "base64" in reasons["bad-base64"]


def test_a_whole_batch_of_bad_rows_does_not_stop_the_consumer(db_url: str) -> None:
    with connect(db_url) as conn:
        bad = insert_all_bad(db_url, "poison")
        queue = conn.SimpleQueue("poison")
        queue.put({"after": True})
        assert queue.get(timeout=5).payload == {"after": True}
        queue.close()
    assert_one_dead_letter_each(db_url, bad)


def test_native_worker_dead_letters_bad_rows_and_runs_the_good(db_url: str, subprocess_env: dict[str, str]) -> None:
    first = Add(1, 2).run_in_worker()
    bad = insert_all_bad(db_url, "default")
    insert_bad(db_url, "default", "unknown-job", messages.dumps(
        messages.task_message(task_name="no.such.Job", task_id="unknown-job", args=[], kwargs={}, queue="default",
                              priority=0, eta=None)
    ), task_name="no.such.Job")
    second = Add(3, 4).run_in_worker()
    run_burst(worker_env(subprocess_env), "--max-processes", "1")
    by_id = {r.task_id: r for r in results(db_url)}
    assert by_id[first.uuid].status == tables.SUCCESSFUL
    assert by_id[second.uuid].status == tables.SUCCESSFUL
    # A decodable message naming an unknown job stays ERRORED: the job may be
    # deployed later, and the message itself is fine.
    assert by_id["unknown-job"].status == tables.ERRORED
    assert requests(db_url) == []
    assert_one_dead_letter_each(db_url, bad)


def test_cli_lists_and_retries_dead_letters(db_url: str) -> None:
    with connect(db_url) as conn:
        insert_bad(db_url, "poison", "bad-not-json", "this is {not JSON")
        queue = conn.SimpleQueue("poison")
        queue.put({"good": 1})
        queue.get(timeout=5).ack()
        queue.close()
    out = cli("results", "--status", "DEAD_LETTER").output  # type: ignore[attr-defined]
    assert "bad-not-json" in out and "UndecodableMessage" in out
    assert "dead_letter" in cli("stats").output  # type: ignore[attr-defined]
    retried = cli("retry", "bad-not-json")
    assert "attempt 2" in retried.output  # type: ignore[attr-defined]
    (again,) = requests(db_url)
    assert (again.task_id, again.message, again.attempt, again.state) == (
        "bad-not-json", "this is {not JSON", 2, tables.PENDING
    )
    # Still bad: the next consumer dead-letters it again, as attempt 2.
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("poison")
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)
        queue.close()
    dead = [(r.task_id, r.attempt, r.status, r.retried) for r in results(db_url) if r.status == tables.DEAD_LETTER]
    assert dead == [("bad-not-json", 1, tables.DEAD_LETTER, True), ("bad-not-json", 2, tables.DEAD_LETTER, False)]
    assert requests(db_url) == []


def test_a_fixed_dead_letter_is_retried_and_delivered(db_url: str) -> None:
    # Retry puts the stored message back; once it decodes it is delivered.
    good = messages.task_message(task_name="t", task_id="fixme", args=[1], kwargs={}, queue="poison", priority=0,
                                 eta=None)
    broken = dict(good, headers="oops")
    insert_bad(db_url, "poison", "fixme", json.dumps(broken))
    with connect(db_url) as conn:
        queue = conn.SimpleQueue("poison")
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)
        from jobtable.db import engine as db_engine

        with db_engine.get_engine(db_url).begin() as c:
            c.execute(tables.result.update().values(message=json.dumps(good)))
        assert "attempt 2" in cli("retry", "fixme").output  # type: ignore[attr-defined]
        message = queue.get(timeout=5)
        assert message.headers["id"] == "fixme" and message.headers["retries"] == 1
        message.ack()
        queue.close()


def test_dashboard_shows_filters_counts_and_retries_dead_letters(db_url: str) -> None:
    with connect(db_url) as conn:
        insert_bad(db_url, "poison", "bad-html", "<script>alert('dead')</script> & not JSON")
        queue = conn.SimpleQueue("poison")
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)
        queue.close()
    (row,) = results(db_url)
    with client(database_url=db_url) as web:
        listing = web.get("/results?status=DEAD_LETTER")
        assert listing.status_code == 200 and "bad-html" in listing.text
        assert "bad-html" not in web.get("/results?status=SUCCESSFUL").text
        assert re.search(r"Dead letters", web.get("/").text)
        page = web.get(f"/results/{row.id}")
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(" in page.text and "raw-message" in page.text
        response = web.act("retry", [row.id], next="/results")
        assert response.status_code == 303
    (again,) = requests(db_url)
    assert (again.task_id, again.attempt, again.message) == ("bad-html", 2, row.message)


# -- the decision itself, for any input --------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "body": json_values | json_values.map(json.dumps),
        "headers": json_values,
        "properties": json_values | st.fixed_dictionaries({}, optional={"body_encoding": json_values}),
        "content-type": st.sampled_from(["application/json", "text/plain"]) | json_values,
        "content-encoding": json_values,
    },
)
stored = st.text() | json_values.map(json.dumps) | envelopes.map(json.dumps) | st.just("[" * 100_000)


@settings(max_examples=200, deadline=None)
@given(stored)
def test_decoding_any_text_gives_a_message_or_a_reason_never_an_exception(text: str) -> None:
    envelope = badrows.decode_envelope(text)
    call = badrows.decode_call(text)
    for outcome in (envelope, call):
        if isinstance(outcome, badrows.BadRow):
            assert outcome.reason and "\x00" not in outcome.reason and len(outcome.reason) <= badrows.REASON_LIMIT
            outcome.reason.encode("utf-8")  # storable
    if isinstance(call, messages.TaskCall):
        assert isinstance(envelope, dict)
        assert isinstance(call.args, list) and isinstance(call.kwargs, dict)


@settings(max_examples=100, deadline=None)
@given(st.lists(json_values, max_size=3), st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_messages_jobtable_builds_always_decode(args: list[object], kwargs: dict[str, object]) -> None:
    message = messages.dumps(
        messages.task_message(task_name="t", task_id="i", args=args, kwargs=kwargs, queue="q", priority=0, eta=None)
    )
    call = badrows.decode_call(message)
    assert isinstance(call, messages.TaskCall)
    assert call.task_name == "t"


@pytest.mark.parametrize("task_id,message", BAD_MESSAGES)
def test_each_bad_example_is_bad(task_id: str, message: str) -> None:
    assert isinstance(badrows.decode_envelope(message), badrows.BadRow)


def test_reasons_are_safe_text() -> None:
    class Raising:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert badrows.safe_text(Raising()) == "<unprintable Raising>"
    assert badrows.safe_text("a\x00b\ud800") == "a\\x00b?"
    assert len(badrows.safe_text("x" * 5000)) <= badrows.REASON_LIMIT
