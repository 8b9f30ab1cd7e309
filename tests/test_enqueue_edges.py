"""Every door refuses what it cannot store with a jobtable error naming the
argument (no OverflowError, UnicodeEncodeError, RecursionError or SQL text),
and stores nothing -- on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kombu import Exchange, Producer, Queue
from sqlalchemy import func, select

import jobtable
from jobtable import params
from jobtable.db import tables
from jobtable.db.engine import get_engine
from jobtable.exceptions import EnqueueError, MessageTooLarge, ParameterError, UnknownModel
from jobtable.execution import instantiate
from jobtable.messages import decode_task
from tests.sample_jobs import Echo

from .transport_helpers import connect
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def count_rows() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.request)).scalar_one())


def only_row() -> Any:
    with get_engine().connect() as conn:
        (row,) = conn.execute(select(tables.request))
        return row


def assert_clear(exc: BaseException, *words: str) -> None:
    text = str(exc)
    assert isinstance(exc, jobtable.JobtableError)
    for word in words:
        assert word in text, (word, text)
    assert "[SQL" not in text and "INSERT" not in text
    text.encode("utf-8")  # the error itself can be logged


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


FAR = datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))

OPTION_CASES = [
    ({"delay": float("inf")}, "delay=inf"),
    ({"delay": float("nan")}, "delay=nan"),
    ({"delay": 1e20}, "delay=1e+20"),
    ({"delay": 10**400}, "too far in the future"),
    ({"delay": timedelta.max}, "delay="),
    ({"delay": FAR}, "out of range"),
    ({"priority": -(10**6)}, "priority="),
    ({"priority": 10**30}, "priority="),
    ({"retries": 10**12}, "retries="),
    ({"retries": -1}, "retries=-1"),
    ({"queue": "q\x00"}, "queue="),
    ({"queue": "q\ud800"}, "lone surrogate"),
    ({"queue": "q" * 256}, "queue is 256 characters"),
    ({"concurrency_key": "k\x00"}, "concurrency_key="),
    ({"concurrency_key": "k\udfff"}, "concurrency_key="),
    ({"concurrency_key": "k" * 300}, "concurrency_key is 300"),
]


@pytest.mark.parametrize(("options", "word"), OPTION_CASES, ids=[f"{list(o)[0]}-{i}" for i, (o, _) in enumerate(OPTION_CASES)])
def test_bad_options_name_the_argument(db_url: str, options: dict[str, Any], word: str) -> None:
    with pytest.raises(EnqueueError) as info:
        Echo().run_in_worker(**options)
    assert_clear(info.value, word, "Echo")
    with pytest.raises(EnqueueError):
        jobtable.run_in_worker_many([Echo(), Echo()], **options)
    assert count_rows() == 0


PARAM_CASES = [
    (("a\ud800",), {}, "argument 0 contains a lone surrogate"),
    ((), {"text": "x\udc80y"}, "argument 'text' contains a lone surrogate"),
    ((), {"d": {"k\ud800": 1}}, "key"),
    ((deep(150),), {}, "nested more than 100 levels"),
    ((10**5000,), {}, "too long to write as JSON"),
    ((), {"s": {1, 2}}, "argument 's' is of type builtins.set"),
]


@pytest.mark.parametrize(("args", "kwargs", "word"), PARAM_CASES)
def test_bad_parameters_name_the_argument(db_url: str, args: tuple[Any, ...], kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ParameterError) as info:
        Echo(*args, **kwargs).run_in_worker()
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert_clear(info.value, word)
    assert count_rows() == 0


def test_a_value_that_contains_itself_is_refused(db_url: str) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ParameterError, match="contains itself"):
        Echo(loop).run_in_worker()
    assert count_rows() == 0


def test_nul_and_non_finite_floats_in_parameters_round_trip(db_url: str) -> None:
    # JSON writes NUL as \u0000 (text columns never see a raw NUL) and has no
    # Infinity/NaN: those are stored as markers and come back as they were.
    request = Echo("a\x00b", float("inf"), nested={"x": [float("-inf"), float("nan")]}).run_in_worker()
    assert request is not None
    row = only_row()
    assert "\x00" not in row.message and "Infinity" not in row.message and "NaN" not in row.message
    call = decode_task(row.message)
    job = instantiate(call.task_name, call.args, call.kwargs)
    assert job.args[0] == "a\x00b" and job.args[1] == float("inf")
    low, nan = job.kwargs["nested"]["x"]
    assert low == float("-inf") and nan != nan


def test_far_but_representable_delay_is_stored(db_url: str) -> None:
    request = Echo().run_in_worker(delay=datetime(9999, 12, 31, tzinfo=timezone.utc))
    assert request is not None and request.state == "scheduled"
    assert only_row().run_at.year == 9999


@pytest.mark.parametrize("bulk", [False, True])
def test_max_message_size_names_the_biggest_argument(db_url: str, bulk: bool) -> None:
    jobtable.configure(max_message_size=50_000)
    jobs = [Echo("small", blob="x" * 60_000)]
    with pytest.raises(MessageTooLarge) as info:
        if bulk:
            jobtable.run_in_worker_many([Echo("fine"), *jobs])
        else:
            jobs[0].run_in_worker()
    assert_clear(info.value, "argument 'blob'", "50,000", "max_message_size", "JOBTABLE_MAX_MESSAGE_SIZE")
    assert info.value.limit == 50_000 and info.value.size > 60_000
    assert count_rows() == 0
    assert Echo("y" * 40_000).run_in_worker() is not None  # under the limit: stored


def test_default_limit_is_ten_mebibytes(db_url: str) -> None:
    assert jobtable.get_settings().max_message_size == 10 * 1024 * 1024
    with pytest.raises(MessageTooLarge, match="10,485,760"):
        Echo("x" * (10 * 1024 * 1024)).run_in_worker()
    assert count_rows() == 0


# -- the shim ------------------------------------------------------------------------


def _shim_cases() -> list[tuple[str, Any, str]]:
    return [
        ("countdown_inf", lambda t: t.apply_async((1, 2), countdown=float("inf")), "countdown=inf"),
        ("countdown_nan", lambda t: t.apply_async((1, 2), countdown=float("nan")), "countdown=nan"),
        ("expires_huge", lambda t: t.apply_async((1, 2), expires=1e20), "expires="),
        ("eta_far", lambda t: t.apply_async((1, 2), eta=FAR), "eta="),
        ("priority", lambda t: t.apply_async((1, 2), priority=10**9), "priority="),
        ("task_id_nul", lambda t: t.apply_async((1, 2), task_id="a\x00b"), "task id"),
        ("task_id_long", lambda t: t.apply_async((1, 2), task_id="a" * 300), "task id"),
        ("queue_long", lambda t: t.apply_async((1, 2), queue="q" * 300), "queue is 300"),
        ("header_set", lambda t: t.apply_async((1, 2), headers={"x": {1}}), "'x'"),
        ("arg_surrogate", lambda t: t.delay("a\ud800", 1), "argument 0"),
        ("arg_deep", lambda t: t.delay(deep(150), 1), "nested more than"),
        ("too_large", lambda t: t.delay("x" * 60_000, 1), "argument 0"),
    ]


@pytest.mark.parametrize(("name", "call", "word"), _shim_cases(), ids=[c[0] for c in _shim_cases()])
def test_shim_refuses_with_a_clear_error(db_url: str, name: str, call: Any, word: str) -> None:
    from tests.shim_tasks import add

    jobtable.configure(max_message_size=50_000)
    with pytest.raises(EnqueueError) as info:
        call(add)
    assert_clear(info.value, word)
    assert count_rows() == 0


# -- the Kombu transport ------------------------------------------------------------------


class Opaque:
    pass


KOMBU_CASES = [
    ("set", {"headers": {"x": {1, 2}}}, "header 'x' is of type builtins.set"),
    ("object", {"headers": {"x": {"y": [Opaque()]}}}, "header 'x'['y'][0] is of type"),
    ("bytes", {"headers": {"x": b"ab"}}, "header 'x' is of type builtins.bytes"),
    ("nan", {"headers": {"x": float("nan")}}, "header 'x' is nan"),
    ("deep", {"headers": {"x": deep(150)}}, "nested more than"),
    ("id_nul", {"headers": {"id": "a\x00"}}, "task id"),
    ("id_long", {"headers": {"id": "a" * 300}}, "task id"),
    ("task_int", {"headers": {"task": 5}}, "header 'task'=5"),
    ("eta_text", {"headers": {"eta": "tomorrow"}}, "header 'eta'"),
    ("eta_inf", {"headers": {"eta": float("inf")}}, "header 'eta'"),
    ("expires_huge", {"headers": {"expires": 1e30}}, "header 'expires'"),
    ("retries_huge", {"headers": {"retries": 10**12}}, "header 'retries'"),
    ("priority_text", {"priority": "high"}, "priority='high'"),
    ("too_large", {"body": "x" * 60_000}, "the body"),
]


@pytest.mark.parametrize(("name", "options", "word"), KOMBU_CASES, ids=[c[0] for c in KOMBU_CASES])
def test_kombu_publish_refuses_with_a_clear_error(db_url: str, name: str, options: dict[str, Any], word: str) -> None:
    jobtable.configure(max_message_size=50_000)
    options = dict(options)
    body = options.pop("body", {"a": 1})
    with connect(db_url) as conn:
        queue = Queue("edges", Exchange("edges"), "edges")
        queue(conn.default_channel).declare()
        with pytest.raises(EnqueueError) as info:
            Producer(conn.default_channel).publish(body, exchange=queue.exchange, routing_key="edges", **options)
        assert_clear(info.value, "Kombu publish to queue 'edges'", word)
        assert count_rows() == 0
        # The channel still works after a refusal.
        Producer(conn.default_channel).publish({"ok": 1}, exchange=queue.exchange, routing_key="edges")
    assert count_rows() == 1


def test_kombu_header_surrogates_are_stored_escaped_as_kombu_does(db_url: str) -> None:
    with connect(db_url) as conn:
        simple = conn.SimpleQueue("edges_surrogate")
        simple.put({"a": 1}, headers={"note": "x\ud800y", "nul": "a\x00b"})
        message = simple.get(timeout=5)
        assert message.headers["note"] == "x\ud800y" and message.headers["nul"] == "a\x00b"
        message.ack()
        simple.close()


def test_kombu_names_the_table_cannot_hold_are_refused(db_url: str) -> None:
    with connect(db_url) as conn:
        for name in ("q" * 300, "q\ud800", "q\x00"):
            with pytest.raises(EnqueueError, match="queue") as info:
                Queue(name, Exchange("edges_names"), "k")(conn.default_channel).declare()
            assert_clear(info.value, "Kombu queue_")
    assert count_rows() == 0


def test_celery_apply_async_through_the_broker_gets_the_error(db_url: str) -> None:
    from celery import Celery

    jobtable.configure(max_message_size=50_000)
    app = Celery("edges", broker="jobtable+" + db_url)
    app.conf.broker_connection_retry_on_startup = False

    @app.task(name="edges.echo", shared=False)  # this app only: a shared task joins every later app
    def echo(value: Any) -> Any:
        return value

    with pytest.raises(MessageTooLarge) as info:
        echo.delay("x" * 60_000)
    assert_clear(info.value, "argument 0", "max_message_size")
    with pytest.raises(EnqueueError, match="header 'x'"):
        echo.apply_async(("a",), headers={"x": {1}})
    with pytest.raises(EnqueueError, match="task id"):
        echo.apply_async(("a",), task_id="t\x00")
    assert count_rows() == 0
    echo.delay("a\ud800")  # Celery's argsrepr holds it raw: stored escaped, as on Redis
    assert count_rows() == 1


# -- ORM references never import a module a message names ---------------------------------


def _reference(model: str) -> dict[str, Any]:
    return {"__type__": params.MODEL_MARKER, "__value__": {"model": model, "pk": [1]}}


@pytest.mark.parametrize("model", ["tests.import_recorder:User", "antigravity:x", "os:system", "this.that:Model"])
def test_orm_reference_to_an_unloaded_or_unmapped_model_is_refused(
    db_url: str, model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "imports"
    monkeypatch.setenv("JT_IMPORT_RECORD", str(record))
    monkeypatch.delitem(sys.modules, "tests.import_recorder", raising=False)
    jobtable.configure(session_factory="tests.orm_models:make_session")
    with pytest.raises(UnknownModel) as info:
        instantiate(Echo.job_name(), [_reference(model)], {})
    assert_clear(info.value, "never from a module a message names")
    assert not record.exists()
    assert "antigravity" not in sys.modules and "tests.import_recorder" not in sys.modules


def test_orm_reference_to_a_loaded_non_model_is_refused(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JT_IMPORT_RECORD", str(tmp_path / "imports"))
    import tests.import_recorder  # noqa: F401  (loaded, but User is not mapped)

    jobtable.configure(session_factory="tests.orm_models:make_session")
    with pytest.raises(UnknownModel):
        instantiate(Echo.job_name(), [_reference("tests.import_recorder:User")], {})


def test_worker_records_an_unknown_model_errored(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess

    from jobtable.messages import task_message, row_values
    from jobtable.db import clock, enqueue_sql

    record = tmp_path / "imports"
    env = {
        **subprocess_env,
        "JT_IMPORT_RECORD": str(record),
        "JOBTABLE_SESSION_FACTORY": "tests.orm_models:make_session",
        "JOBTABLE_APP": "tests.sample_jobs",
    }
    now = clock.utcnow()
    envelope = task_message(
        task_name=Echo.job_name(), task_id="bad-model", args=[_reference("tests.import_recorder:User")], kwargs={},
        queue="default", priority=0, eta=None,
    )
    with get_engine().begin() as conn:
        enqueue_sql.insert_requests(conn, [row_values(envelope, "default", now)])
    subprocess.run(
        [sys.executable, "-m", "jobtable", "worker", "--burst", "--max-processes", "1"],
        env=env, cwd=Path(__file__).resolve().parent.parent, check=True, timeout=120, capture_output=True,
    )
    with get_engine().connect() as conn:
        (result,) = conn.execute(select(tables.result))
    assert result.status == tables.ERRORED
    assert "not a SQLAlchemy model loaded in this worker" in result.error_message
    assert not record.exists()
