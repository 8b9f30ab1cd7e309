"""Zero-code instrumentation: the real ``opentelemetry-instrument`` command
finds ``JobtableInstrumentor`` by its entry point, in a producer script, in
``jobtable worker --burst`` and in a Celery worker on the jobtable broker
(with opentelemetry-instrumentation-celery); spans are read from what the
console exporter prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

from jobtable import otel
from jobtable.db import reads_sql
from jobtable.db.engine import get_engine

from .otel_support import CELERY, INSTRUMENT, JOBTABLE, Printed, hex_id, instrument, instrumented_env, read_console
from .polling import terminate, wait_for

ROOT = Path(__file__).resolve().parent.parent


def stored_requests(queue: str) -> dict[str, dict]:
    with get_engine().connect() as conn:
        return {r.task_id: json.loads(r.message)["headers"] for r in reads_sql.list_requests(conn) if r.queue == queue}


def produce(kind: str, env: dict[str, str], out: Path, *args: str) -> Printed:
    instrument([sys.executable, "-m", "tests.otel_producer", kind, *args], env, out)
    printed = read_console(out)
    assert printed.other == []
    return printed


def test_the_entry_point_is_the_instrumentor() -> None:
    found = entry_points(group="opentelemetry_instrumentor", name="jobtable")
    assert len(found) == 1, "no 'jobtable' opentelemetry_instrumentor entry point: run pip install -e '.[test]'"
    (entry_point,) = found
    assert entry_point.value == "jobtable.otel:JobtableInstrumentor"
    instrumentor = entry_point.load()
    assert instrumentor is otel.JobtableInstrumentor
    assert instrumentor().instrumentation_dependencies() == ("jobtable >= 0.1",)
    # What opentelemetry-instrument checks before instrumenting: satisfied.
    assert get_dependency_conflicts(instrumentor().instrumentation_dependencies()) is None


def test_import_jobtable_does_not_load_the_instrumentation(subprocess_env: dict[str, str]) -> None:
    code = (
        "import sys, jobtable, jobtable.enqueue, jobtable.worker.main, jobtable.shim.send\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.instrumentation', 'opentelemetry.sdk', 'wrapt'))))\n"
        "print('jobtable.otel' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "False"], out


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_zero_code_producer_and_burst_worker(db_url: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str) -> None:
    # Metrics too; the batch span processor keeps its default 5 s delay, so
    # forked members export only because they flush before os._exit.
    env = instrumented_env(subprocess_env, OTEL_METRICS_EXPORTER="console")
    queue = f"zero-code-{pool}"
    produced = produce("native", env, tmp_path / "producer.out", queue)
    (request,) = produced.named("request")
    sends = produced.named(f"send {queue}")
    assert len(sends) == 2
    for send in sends:
        assert send["kind"] == "SpanKind.PRODUCER"
        assert send["context"]["trace_id"] == request["context"]["trace_id"]
        assert send["parent_id"] == request["context"]["span_id"]
        assert send["attributes"]["messaging.system"] == "jobtable"
    by_id = {send["attributes"]["messaging.message.id"]: send for send in sends}
    stored = stored_requests(queue)
    assert set(stored) == set(by_id)
    for task_id, headers in stored.items():  # the context rides in the row
        _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
        assert int(trace_id, 16) == hex_id(by_id[task_id]["context"]["trace_id"])
        assert int(span_id, 16) == hex_id(by_id[task_id]["context"]["span_id"])

    argv = [JOBTABLE, "--app", "tests.sample_jobs", "worker", "--burst", "-q", queue, "--pool", pool,
            "--max-processes", "1", "--stats-every", "0", "--log-level", "warning"]
    worked = instrument(argv, env, tmp_path / "worker.out")
    printed = read_console(tmp_path / "worker.out")
    assert printed.other == []  # nothing but the exporters' documents
    consumers = {s["attributes"]["messaging.message.id"]: s for s in printed.named(f"process {queue}")}
    assert set(consumers) == set(by_id), worked.stderr[-3000:]
    outcomes = {}
    for task_id, span in consumers.items():
        assert span["kind"] == "SpanKind.CONSUMER" and span["parent_id"] is None  # its own trace...
        # ...linked to the span that enqueued it.
        assert [link["context"]["span_id"] for link in span["links"]] == [by_id[task_id]["context"]["span_id"]]
        assert [link["context"]["trace_id"] for link in span["links"]] == [request["context"]["trace_id"]]
        outcomes[span["attributes"]["jobtable.job.class"]] = span["attributes"]["jobtable.job.outcome"]
    assert outcomes == {"tests.sample_jobs.Echo": "SUCCESSFUL", "tests.sample_jobs.Fails": "ERRORED"}
    (failed,) = [s for s in consumers.values() if s["attributes"]["jobtable.job.outcome"] == "ERRORED"]
    assert failed["status"]["status_code"] == "ERROR"
    assert [e["attributes"]["exception.message"] for e in failed["events"] if e["name"] == "exception"] == ["boom"]
    # Cumulative counters, exported at each flush: the largest value is the total.
    consumed: dict[str, int] = {}
    for point in printed.points("messaging.client.consumed.messages"):
        outcome = point["attributes"]["jobtable.job.outcome"]
        consumed[outcome] = max(consumed.get(outcome, 0), point["value"])
    assert consumed == {"SUCCESSFUL": 1, "ERRORED": 1}


def test_disabled_by_name_records_nothing(db_url: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    env = instrumented_env(subprocess_env, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="jobtable")
    produced = produce("native", env, tmp_path / "producer.out", "disabled")
    assert [s["name"] for s in produced.spans] == ["request"]  # the app's own span only
    headers = stored_requests("disabled")
    assert len(headers) == 2 and not any("traceparent" in h for h in headers.values())


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_celery_consumer_span_joins_the_jobs_trace(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    record = tmp_path / "record.txt"
    # A short batch delay: the span is awaited in the worker's output.
    env = instrumented_env(subprocess_env, JT_RECORD=str(record), OTEL_BSP_SCHEDULE_DELAY="200")
    produced = produce("celery", env, tmp_path / "producer.out")
    (send,) = produced.named("send transport_tests")
    (request,) = produced.named("request")
    assert send["parent_id"] == request["context"]["span_id"]

    out = tmp_path / "celery.out"
    log = tmp_path / "celery.log"
    with out.open("w") as stdout, log.open("w") as stderr:
        worker = subprocess.Popen(
            # --quiet: no banner on stdout, where the exporter writes.
            [INSTRUMENT, CELERY, "-A", "tests.transport_celery_app", "--quiet", "worker", "-P", pool, "-c", "2",
             "-Q", "transport_tests", "-l", "warning", "-n", f"otel{os.getpid()}-{pool}@%h"],
            env=env, cwd=ROOT, stdout=stdout, stderr=stderr, text=True,
        )
    try:
        task = "tests.transport_celery_app.RecordJob"
        wait_for(
            lambda: worker.poll() is not None or read_console(out, still_writing=True).named(f"run/{task}"),
            timeout=60,
            what="the Celery worker's span",
        )
        assert worker.poll() is None, log.read_text()[-5000:]
        assert record.read_text().splitlines()[1:] == ["job traced"]  # after READY
    finally:
        terminate(worker, timeout=20)
    printed = read_console(out)
    assert printed.other == ["worker: Warm shutdown (MainProcess)"]
    (run,) = printed.named(f"run/{task}")
    # One trace: the request, the Job's enqueue, and Celery running it.
    assert run["kind"] == "SpanKind.CONSUMER"
    assert run["context"]["trace_id"] == send["context"]["trace_id"] == request["context"]["trace_id"]
    assert run["parent_id"] == send["context"]["span_id"]
    assert run["attributes"]["celery.task_name"] == task
    assert run["attributes"]["messaging.message.id"] == send["attributes"]["messaging.message.id"]
