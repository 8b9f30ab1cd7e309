"""OpenTelemetry spans and metrics, checked with the SDK's in-memory exporters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import jobtable
from jobtable import messages, otel
from jobtable.telemetry import enabled, flush, message_headers, process_span, producer_links
from jobtable.db import clock, enqueue_sql, reads_sql
from jobtable.db.engine import get_engine
from jobtable.messages import decode_task
from tests.sample_jobs import Echo


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def metric_points(self, name: str) -> list:
        data = self.metrics.get_metrics_data()
        points = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    instrumentor = otel.JobtableInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader]))
    yield Telemetry(exporter, reader, tracer_provider)
    instrumentor.uninstrument()


def stored_headers(uuid: str) -> dict:
    with get_engine().connect() as conn:
        (row,) = [r for r in reads_sql.list_requests(conn) if r.task_id == uuid]
    return json.loads(row.message)["headers"]


def test_enqueue_is_a_producer_span_whose_context_is_stored(db_url: str, telemetry: Telemetry) -> None:
    request = Echo().run_in_worker(queue="emails")
    assert request is not None
    (span,) = telemetry.spans.get_finished_spans()
    assert span.name == "send emails"
    assert span.kind == SpanKind.PRODUCER
    assert span.attributes["messaging.system"] == "jobtable"
    assert span.attributes["messaging.destination.name"] == "emails"
    assert span.attributes["messaging.operation.type"] == "send"
    assert span.attributes["messaging.message.id"] == request.uuid
    assert span.attributes["jobtable.job.class"] == "tests.sample_jobs.Echo"
    traceparent = stored_headers(request.uuid)["traceparent"]
    assert traceparent.split("-")[1] == format(span.context.trace_id, "032x")
    assert traceparent.split("-")[2] == format(span.context.span_id, "016x")
    (sent,) = telemetry.metric_points("messaging.client.sent.messages")
    assert sent.value == 1 and sent.attributes["messaging.destination.name"] == "emails"


def test_bulk_enqueue_is_one_batch_span(db_url: str, telemetry: Telemetry) -> None:
    jobtable.run_in_worker_many([Echo(i) for i in range(3)])
    (span,) = telemetry.spans.get_finished_spans()
    assert span.attributes["messaging.batch.message_count"] == 3
    (sent,) = telemetry.metric_points("messaging.client.sent.messages")
    assert sent.value == 3


def test_failed_enqueue_sets_error_status(db_url: str, telemetry: Telemetry) -> None:
    with pytest.raises(jobtable.EnqueueError):
        Echo().run_in_worker(priority=10**6)
    (span,) = telemetry.spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_process_span_links_to_the_producer(db_url: str, telemetry: Telemetry) -> None:
    request = Echo().run_in_worker()
    assert request is not None
    headers = stored_headers(request.uuid)
    (producer,) = telemetry.spans.get_finished_spans()
    with pytest.raises(ValueError), process_span(
        queue="default",
        task_name=request.job_class,
        task_id=request.uuid,
        attempt=1,
        headers=headers,
        run_at=request.start_at,
        started_at=request.start_at,
    ):
        raise ValueError("boom")
    consumer = telemetry.spans.get_finished_spans()[-1]
    assert consumer.name == "process default" and consumer.kind == SpanKind.CONSUMER
    assert consumer.parent is None  # a link, not a child
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert consumer.status.status_code == StatusCode.ERROR
    assert consumer.attributes["jobtable.job.outcome"] == "ERRORED"
    assert consumer.attributes["messaging.operation.type"] == "process"
    (consumed,) = telemetry.metric_points("messaging.client.consumed.messages")
    assert consumed.attributes["jobtable.job.outcome"] == "ERRORED"
    assert telemetry.metric_points("jobtable.queue.wait_time")[0].count == 1


def test_queue_depth_gauge(db_url: str, telemetry: Telemetry) -> None:
    Echo().run_in_worker()
    Echo().run_in_worker(delay=60)
    points = {
        p.attributes["jobtable.state"]: p.value
        for p in telemetry.metric_points("jobtable.queue.depth")
        if p.attributes["messaging.destination.name"] == "default"
    }
    assert points == {"pending": 1, "scheduled": 1, "claimed": 0, "running": 0}


def test_nothing_is_recorded_when_not_instrumented(db_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    request = Echo().run_in_worker()
    assert request is not None
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in stored_headers(request.uuid)
    assert decode_task(json.dumps({"headers": stored_headers(request.uuid), "body": "[[], {}, {}]"})).args == []


def test_worker_runs_are_consumer_spans_linked_to_their_producers(db_url: str, telemetry: Telemetry) -> None:
    from jobtable.worker.config import WorkerConfig
    from jobtable.worker.main import run_worker
    from tests.sample_jobs import Fails

    ok = Echo().run_in_worker(queue="otel")
    failed = Fails().run_in_worker(queue="otel")
    assert ok is not None and failed is not None
    producers = {s.attributes["messaging.message.id"]: s for s in telemetry.spans.get_finished_spans()}
    # Threads pool: the members run in this process, where the exporter is.
    assert run_worker(WorkerConfig(queues=["otel"], processes=1, pool="threads", burst=True, stats_every=0)) == 0
    consumers = {
        s.attributes["messaging.message.id"]: s
        for s in telemetry.spans.get_finished_spans()
        if s.kind == SpanKind.CONSUMER
    }
    assert set(consumers) == {ok.uuid, failed.uuid}
    for uuid, span in consumers.items():
        assert span.name == "process otel" and span.parent is None
        assert [link.context.span_id for link in span.links] == [producers[uuid].context.span_id]
        assert span.attributes["jobtable.job.attempt"] == 1
    assert consumers[ok.uuid].attributes["jobtable.job.outcome"] == "SUCCESSFUL"
    bad = consumers[failed.uuid]
    assert bad.attributes["jobtable.job.outcome"] == "ERRORED"
    assert bad.status.status_code == StatusCode.ERROR
    (event,) = [e for e in bad.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "ValueError" and event.attributes["exception.message"] == "boom"
    outcomes = {
        p.attributes["jobtable.job.outcome"]: p.value for p in telemetry.metric_points("messaging.client.consumed.messages")
    }
    assert outcomes == {"SUCCESSFUL": 1, "ERRORED": 1}


def _raw_row(message: str, task_id: str, queue: str) -> dict:
    """A row as the Kombu transport would store what any client published."""
    envelope = messages.task_message(
        task_name="tests.sample_jobs.Echo", task_id=task_id, args=[], kwargs={}, queue=queue, priority=0, eta=None
    )
    row = messages.row_values(envelope, queue, clock.utcnow())
    row["message"] = message
    return row


def _with_headers(task_id: str, **headers: object) -> str:
    envelope = messages.task_message(
        task_name="tests.sample_jobs.Echo", task_id=task_id, args=[], kwargs={}, queue="poison", priority=0, eta=None
    )
    envelope["headers"].update(headers)
    # ASCII-escaped, as Kombu's JSON serializer writes it: a lone surrogate
    # travels as "\udcff" and comes back whole from json.loads.
    return json.dumps(envelope)


def test_bad_trace_headers_cost_the_link_not_the_job(db_url: str, telemetry: Telemetry) -> None:
    from jobtable.worker.config import WorkerConfig
    from jobtable.worker.main import run_worker

    bad = {
        "int-traceparent": _with_headers("int-traceparent", traceparent=5),
        "list-traceparent": _with_headers("list-traceparent", traceparent=[1, 2]),
        "surrogate": _with_headers("surrogate", traceparent="\udcff", tracestate="\udcff", baggage="\udcff"),
        "nul": _with_headers("nul", traceparent="00-\x00-\x00-01"),
        "nested": _with_headers("nested", traceparent=json.loads("[" * 200 + "]" * 200)),
        "headers-not-object": json.dumps({"headers": ["traceparent"], "body": "[[], {}, {}]"}),
        "not-an-object": "[1, 2, 3]",
        "not-json": "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    with get_engine().begin() as conn:
        enqueue_sql.insert_requests(conn, [_raw_row(message, task_id, "poison") for task_id, message in bad.items()])
    good = Echo("after the poison").run_in_worker(queue="poison")
    assert good is not None
    assert run_worker(WorkerConfig(queues=["poison"], processes=1, pool="threads", burst=True, stats_every=0)) == 0
    consumers = {
        s.attributes["messaging.message.id"]: s for s in telemetry.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER
    }
    # Every message was run and recorded, one span each; only the good one links.
    assert set(consumers) == set(bad) | {good.uuid}
    assert all(consumers[task_id].links == () for task_id in bad)
    assert len(consumers[good.uuid].links) == 1
    assert consumers[good.uuid].attributes["jobtable.job.outcome"] == "SUCCESSFUL"
    # The undecodable ones end as they would uninstrumented: dead letters.
    for task_id in ("headers-not-object", "not-an-object", "not-json"):
        assert consumers[task_id].attributes["jobtable.job.outcome"] == "DEAD_LETTER", task_id
    with get_engine().connect() as conn:
        assert [r for r in reads_sql.list_requests(conn) if r.queue == "poison"] == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
HEADER_NAMES = st.sampled_from(["traceparent", "tracestate", "baggage"]) | st.text(max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(HEADER_NAMES, JSON | st.text(alphabet=st.characters(codec=None)), max_size=5))
def test_producer_links_never_raise(headers: dict) -> None:
    links = producer_links(headers)
    assert len(links) <= 1
    if links:  # only a well-formed W3C traceparent string makes one
        (link,) = links
        traceparent = headers["traceparent"]
        assert isinstance(traceparent, str)
        assert traceparent.split("-")[1] == format(link.context.trace_id, "032x")


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(), st.binary(), JSON.map(json.dumps), st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n)))
def test_message_headers_is_a_dict_for_any_message(message: object) -> None:
    assert isinstance(message_headers(message), dict)


def test_message_headers_reads_the_stored_envelope() -> None:
    message = _with_headers("x", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert message_headers(message)["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert message_headers("[" * 100_000) == {}
    assert message_headers(None) == {}


def test_the_instrumentor_follows_base_instrumentor(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = otel.JobtableInstrumentor()
    assert instrumentor is otel.JobtableInstrumentor()  # one instance, as every BaseInstrumentor
    assert not instrumentor.is_instrumented_by_opentelemetry and not enabled()
    instrumentor.instrument(tracer_provider=provider)
    try:
        assert instrumentor.is_instrumented_by_opentelemetry and enabled()
        # A second call is the base class's logged no-op: the first provider stays.
        instrumentor.instrument(tracer_provider=TracerProvider())
        assert "already instrumented" in caplog.text
        Echo().run_in_worker()
        assert [s.name for s in exporter.get_finished_spans()] == ["send default"]
    finally:
        instrumentor.uninstrument()
    assert not instrumentor.is_instrumented_by_opentelemetry and not enabled()
    request = Echo().run_in_worker()
    assert request is not None and "traceparent" not in stored_headers(request.uuid)
    assert len(exporter.get_finished_spans()) == 1


class _FailingFlush(SimpleSpanProcessor):
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        raise OSError("collector unreachable")


def test_flush_exports_what_is_buffered_and_survives_a_failing_exporter(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    # A batch processor holds spans for seconds: what a member ending with
    # os._exit would lose without flush().
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    reader = InMemoryMetricReader()
    instrumentor = otel.JobtableInstrumentor()
    instrumentor.instrument(tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        Echo().run_in_worker()
        assert exporter.get_finished_spans() == ()
        flush()
        assert [s.name for s in exporter.get_finished_spans()] == ["send default"]
        provider.add_span_processor(_FailingFlush(InMemorySpanExporter()))
        flush()  # logged, not raised: the member must still exit
        assert "Could not flush TracerProvider" in caplog.text
    finally:
        instrumentor.uninstrument()
    flush()  # not instrumented: nothing to do
