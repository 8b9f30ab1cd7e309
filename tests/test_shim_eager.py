"""task_always_eager: .delay() runs inline and returns an EagerResult (no
database needed), and what the shim refuses with a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from jobtable.params import ParameterError
from jobtable.shim import (
    Celery,
    EagerResult,
    MaxRetriesExceededError,
    NotSupported,
    chain,
    chord,
    group,
    shared_task,
    states,
)
from tests import shim_tasks as t


@pytest.fixture
def eager() -> Iterator[Celery]:
    app = t.app
    saved = dict(app.conf)
    app.conf.task_always_eager = True
    yield app
    for key, value in saved.items():
        app.conf._data[key] = value


def test_delay_runs_inline(eager: Celery, tmp_path: Any) -> None:
    result = t.add.delay(2, 3)
    assert isinstance(result, EagerResult)
    assert result.get() == 5 and result.state == states.SUCCESS and result.successful() and result.ready()
    log = str(tmp_path / "flaky.log")
    retried = t.flaky.delay(log, 2)
    # retry() runs the task again at once, with request.retries + 1 and the same id.
    assert retried.get() == 2
    assert [line.split()[:2] for line in open(log).read().splitlines()] == [
        [retried.id, "0"],
        [retried.id, "1"],
        [retried.id, "2"],
    ]


def test_failures_as_results_or_raised(eager: Celery, tmp_path: Any) -> None:
    failed = t.boom.delay("eager")
    assert failed.state == states.FAILURE and failed.failed()
    assert isinstance(failed.result, ValueError)
    with pytest.raises(ValueError, match="eager"):
        failed.get()
    assert isinstance(failed.get(propagate=False), ValueError)
    exhausted = t.flaky.delay(str(tmp_path / "f.log"), 99)
    with pytest.raises(ValueError, match="flaky 2"):
        exhausted.get()
    with pytest.raises(MaxRetriesExceededError):
        t.retry_without_exc.delay(str(tmp_path / "p.log")).get()
    with pytest.raises(KeyError):
        t.auto_kwargs.delay(str(tmp_path / "k.log")).get()
    eager.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match="eager"):
        t.boom.delay("eager")


def test_canvas_eagerly(eager: Celery) -> None:
    assert chain(t.add.s(1, 2), t.add.s(3)).delay().get() == 6
    assert group(t.add.s(i, i) for i in range(3)).delay().get() == [0, 2, 4]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)])(t.total.s()).get() == 6
    assert t.add.apply_async((1, 1), link=t.echo.s()).get() == 2


def test_request_in_eager_mode(eager: Celery) -> None:
    info = t.whoami.apply_async(("e",), task_id="eager-id").get()
    assert info["id"] == "eager-id" and info["retries"] == 0 and info["args"] == ["e"]


def test_arguments_must_survive_json_even_eagerly(eager: Celery) -> None:
    with pytest.raises(ParameterError, match="cannot store"):
        t.echo.delay(object())
    when = datetime(2026, 11, 24, 3, 0)
    assert t.echo.delay(when).get() == when  # datetimes round-trip as in the queue


def test_calling_checks_the_signature() -> None:
    with pytest.raises(TypeError, match="tests.shim_tasks.add"):
        t.add.delay(1, 2, 3)
    assert t.add(1, 2) == 3  # calling the task runs the function here
    assert t.add.s(1)(2) == 3


def test_names_follow_celery() -> None:
    assert t.add.name == "tests.shim_tasks.add"
    assert t.whoami.name == "shim.whoami"
    assert t.add.job_class.job_name() == "tests.shim_tasks.add"


def test_names_match_real_celery() -> None:
    """The same function gets the same name from Celery (rows interchangeable)."""
    celery = pytest.importorskip("celery")

    def probe(x: int) -> int:
        return x

    probe.__module__ = "proj.tasks"
    real = celery.Celery("proj", set_as_current=False).task(shared=False)(probe)
    ours = Celery("proj", set_as_current=False).task(probe)
    assert real.name == ours.name == "proj.tasks.probe"


def test_unsupported_features_name_the_alternative(tmp_path: Any) -> None:
    def fn() -> None:
        return None

    cases: list[tuple[Any, str]] = [
        (lambda: shared_task(serializer="pickle")(fn), "serializer='pickle'"),
        (lambda: Celery("x", set_as_current=False, task_serializer="pickle"), "task_serializer='pickle'"),
        (
            lambda: Celery("x", set_as_current=False, broker="redis://localhost"),
            "broker_url='redis://localhost'.*jobtable",
        ),
        (lambda: Celery("x", set_as_current=False, backend="redis://localhost"), "result_backend"),
        (lambda: t.add.apply_async((1, 1), connection=object()), "connection.*run_in_worker"),
        (lambda: t.add.apply_async((1, 1), routing_key="x"), "routing_key.*queue="),
        (lambda: t.add.apply_async((1, 1), bogus=1), "bogus"),
        (lambda: t.add.update_state(state="SUCCESS"), "update_state"),
        (lambda: t.add.replace(group(t.add.s(1, 1))), "replace"),
        (lambda: Celery("x", set_as_current=False).control, "app.control"),
        (lambda: Celery("x", set_as_current=False, task_annotations={"a": {}}), "task_annotations"),
    ]
    for action, message in cases:
        with pytest.raises(NotSupported, match=message):
            action()


def test_config_from_object_with_namespace() -> None:
    class DjangoSettings:
        CELERY_TASK_ALWAYS_EAGER = True
        CELERY_TASK_DEFAULT_QUEUE = "jobs"
        DEBUG = True

    app = Celery("cfg", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert app.conf.task_always_eager is True and app.conf.task_default_queue == "jobs"
    assert "debug" not in app.conf


def test_broker_url_is_the_database(db_url: str) -> None:
    from jobtable import get_settings

    Celery("url", set_as_current=False, broker="jobtable+" + db_url, backend="jobtable")
    assert get_settings().database_url == db_url
    sent = t.add.delay(1, 1)
    assert sent is not None and sent.state == states.PENDING


def test_autodiscover_is_lazy(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "lazyapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(
        "from jobtable.shim import shared_task\n\n@shared_task\ndef found():\n    return 'found'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celery("lazy", set_as_current=False)
    app.autodiscover_tasks(lambda: ["lazyapp"])
    import sys

    assert "lazyapp.tasks" not in sys.modules  # nothing imported yet (Django apps may not be ready)
    assert "lazyapp.tasks.found" in app.tasks
    assert app.tasks["lazyapp.tasks.found"]() == "found"


def test_custom_base_task_and_handlers(eager: Celery) -> None:
    seen: list[str] = []

    class Audited(eager.Task):  # type: ignore[misc,name-defined]
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            seen.append(f"ok {retval}")

        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            seen.append(f"failed {exc}")

    @eager.task(base=Audited)
    def half(x: int) -> float:
        return 1 / x

    half.delay(2)
    half.delay(0)
    assert seen == ["ok 0.5", "failed division by zero"]


def test_current_app_is_the_last_app_created_else_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobtable.shim import current as shim_current
    from jobtable.shim import current_app

    monkeypatch.setattr(shim_current, "_current", None)  # as in a process that has created no app yet
    default = current_app()
    assert isinstance(default, Celery) and default.main == "default" and current_app() is default
    Celery("hidden", set_as_current=False)
    assert current_app() is default
    newer = Celery("newer", task_always_eager=True)
    assert current_app() is newer

    @shared_task
    def through_current(x: int) -> int:
        return x * 2

    # A shared task is sent through the current app: its eager setting runs it inline.
    result = through_current.delay(21)
    assert isinstance(result, EagerResult) and result.get() == 42
