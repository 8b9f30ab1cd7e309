"""The spans and metrics jobtable emits, following the messaging semantic conventions.

Off until ``jobtable.otel.JobtableInstrumentor`` switches them on (``enable``):
until then every hook returns at its first line, so an application without
OpenTelemetry pays one attribute check per enqueue and per job.  This module
needs only ``opentelemetry-api``; the instrumentor (``jobtable.otel``, which
imports ``opentelemetry-instrumentation``) sits above it, so ``import
jobtable`` does not load the instrumentation machinery.

- Enqueue: a PRODUCER span ``send {queue}``; its context is stored in the
  message headers (``traceparent``, top level, where Celery's instrumentation
  reads it from ``task.request``), so it survives in the row.
- Processing: a CONSUMER span ``process {queue}`` that *links* to the producer
  span instead of being its child, so a job run hours later (or an idle
  worker's polling) does not stretch or pollute the request's trace.
- Metrics: sent and consumed messages (by outcome), operation duration,
  queue wait time, and queue depth (an observable gauge that queries the
  database only when a meter reader collects).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

SYSTEM = "jobtable"
_SCOPE = "jobtable"
_logger = logging.getLogger("jobtable.otel")
try:
    _VERSION = importlib.metadata.version("jobtable")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "0"


class _State:
    enabled = False
    tracer: trace.Tracer = trace.NoOpTracer()
    # None: the global providers (what ``opentelemetry-instrument`` sets up).
    tracer_provider: trace.TracerProvider | None = None
    meter_provider: metrics.MeterProvider | None = None
    sent: Any = None
    consumed: Any = None
    duration: Any = None
    wait: Any = None
    depth: Any = None


_state = _State()


def enabled() -> bool:
    return _state.enabled


def enable(tracer_provider: trace.TracerProvider | None, meter_provider: metrics.MeterProvider | None) -> None:
    """Create the tracer and instruments and switch the hooks on."""
    _state.tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider=tracer_provider)
    meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider=meter_provider)
    _state.sent = meter.create_counter(
        "messaging.client.sent.messages", unit="{message}", description="Jobs enqueued."
    )
    _state.consumed = meter.create_counter(
        "messaging.client.consumed.messages", unit="{message}", description="Jobs run, by outcome."
    )
    _state.duration = meter.create_histogram(
        "messaging.client.operation.duration", unit="s", description="Duration of enqueues and job runs."
    )
    _state.wait = meter.create_histogram("jobtable.queue.wait_time", unit="s", description="Time from due to started.")
    _state.depth = meter.create_observable_gauge(
        "jobtable.queue.depth", callbacks=[_observe_depth], unit="{job}", description="Jobs by queue and state."
    )
    _state.tracer_provider = tracer_provider
    _state.meter_provider = meter_provider
    _state.enabled = True


def disable() -> None:
    _state.enabled = False
    _state.tracer = trace.NoOpTracer()
    _state.tracer_provider = _state.meter_provider = None


#: How long a worker process leaving with ``os._exit`` waits for its spans and
#: metrics to be exported: bounded, so an unreachable collector cannot keep a
#: finished member from exiting.
FLUSH_TIMEOUT_MILLIS = 5000


def flush() -> None:
    """Export what the providers still buffer.

    For processes that end with ``os._exit`` (the worker's forked members):
    they skip the SDK's ``atexit`` shutdown, and a batch processor would
    otherwise drop the spans of the last jobs they ran.  The API's no-op
    providers have no ``force_flush``; an exporter's failure must not keep
    the process from exiting, so it is logged and ignored.
    """
    if not _state.enabled:
        return
    providers: list[Any] = [
        _state.tracer_provider or trace.get_tracer_provider(),
        _state.meter_provider or metrics.get_meter_provider(),
    ]
    for provider in providers:
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is None:
            continue
        try:
            force_flush(timeout_millis=FLUSH_TIMEOUT_MILLIS)
        except Exception:
            _logger.warning("Could not flush %s.", type(provider).__name__, exc_info=True)


def _attributes(queue: str, operation: str, task_name: str, task_id: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "jobtable.job.class": task_name,
    }
    if task_id is not None:
        attributes["messaging.message.id"] = task_id
    return attributes


# -- producer ----------------------------------------------------------------------


@contextmanager
def send_span(queue: str, task_name: str, task_ids: Sequence[str]) -> Iterator[dict[str, str]]:
    """Span around an enqueue; yields the headers that carry its context.

    One span per call: a bulk enqueue is one ``send`` with
    ``messaging.batch.message_count``, as the conventions describe batches.
    """
    if not _state.enabled:
        yield {}
        return
    attributes = _attributes(queue, "send", task_name, task_ids[0] if len(task_ids) == 1 else None)
    if len(task_ids) > 1:
        attributes["messaging.batch.message_count"] = len(task_ids)
    started = time.perf_counter()
    with _state.tracer.start_as_current_span(
        f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes, record_exception=True
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        error: BaseException | None = None
        try:
            yield carrier
        except BaseException as exc:
            error = exc
            raise
        finally:
            metric_attributes = {
                "messaging.system": SYSTEM,
                "messaging.destination.name": queue,
                "messaging.operation.name": "send",
            }
            if error is not None:
                metric_attributes["error.type"] = type(error).__qualname__
            _state.sent.add(len(task_ids), metric_attributes)
            _state.duration.record(time.perf_counter() - started, metric_attributes)


# -- consumer ---------------------------------------------------------------------


class ProcessSpan:
    """What the worker tells the span about the job's outcome."""

    def __init__(self, span: trace.Span | None) -> None:
        self.span = span
        self.outcome = "SUCCESSFUL"

    def failed(self, exc: BaseException, outcome: str = "ERRORED") -> None:
        self.outcome = outcome
        if self.span is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))
            self.span.set_attribute("error.type", type(exc).__qualname__)

    def set_outcome(self, outcome: str) -> None:
        self.outcome = outcome

    def record_failure(self, error_type: str, message: str, stacktrace: str | None) -> None:
        """A failure the worker caught and recorded (no exception object left)."""
        if self.span is None:
            return
        attributes = {"exception.type": error_type, "exception.message": message}
        if stacktrace:
            attributes["exception.stacktrace"] = stacktrace
        self.span.add_event("exception", attributes)
        self.span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
        self.span.set_attribute("error.type", error_type)


def message_headers(message: Any) -> dict[str, Any]:
    """The headers of a stored message, ``{}`` when it has none.

    A row holds whatever a Kombu client published: not JSON, not an object,
    headers that are not an object.  The worker's own decoding turns such a
    message into a recorded failure; reading its trace context must not
    raise first and take the job's pool member down instead.
    """
    try:
        envelope = json.loads(message)
    except (TypeError, ValueError, RecursionError):  # not text, not JSON, nested too deep
        return {}
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    return headers if isinstance(headers, dict) else {}


def producer_links(headers: Any) -> list[Link]:
    """A link to the span that enqueued the message, if its headers carry one.

    Only string headers are offered to the propagators (a ``traceparent`` of
    5 makes the W3C one raise ``TypeError``), and a propagator that raises
    anyway (a lone surrogate, a third-party format configured by
    ``OTEL_PROPAGATORS``) costs the link, not the job.
    """
    if not isinstance(headers, dict):
        return []
    carrier = {key: value for key, value in headers.items() if isinstance(key, str) and isinstance(value, str)}
    try:
        producer = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    except Exception:
        return []
    return [Link(producer)] if producer.is_valid else []


@contextmanager
def process_span(
    *,
    queue: str,
    task_name: str,
    task_id: str,
    attempt: int,
    headers: dict[str, Any],
    run_at: datetime | None,
    started_at: datetime | None,
) -> Iterator[ProcessSpan]:
    """Span around one job run.  Exceptions escaping it are recorded too."""
    if not _state.enabled:
        yield ProcessSpan(None)
        return
    links = producer_links(headers)
    attributes = _attributes(queue, "process", task_name, task_id)
    attributes["jobtable.job.attempt"] = attempt
    # A fresh root context: the job's span is not a child of whatever the
    # worker thread happened to have current.
    token = otel_context.attach(otel_context.Context())
    started = time.perf_counter()
    try:
        with _state.tracer.start_as_current_span(
            f"process {queue}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            handle = ProcessSpan(span)
            try:
                yield handle
            except BaseException as exc:
                handle.failed(exc)
                raise
            finally:
                span.set_attribute("jobtable.job.outcome", handle.outcome)
                metric_attributes = {
                    "messaging.system": SYSTEM,
                    "messaging.destination.name": queue,
                    "messaging.operation.name": "process",
                    "jobtable.job.outcome": handle.outcome,
                }
                _state.consumed.add(1, metric_attributes)
                _state.duration.record(time.perf_counter() - started, metric_attributes)
                if run_at is not None and started_at is not None:
                    _state.wait.record(
                        max(0.0, (started_at - run_at).total_seconds()),
                        {"messaging.system": SYSTEM, "messaging.destination.name": queue},
                    )
    finally:
        otel_context.detach(token)


# -- queue depth --------------------------------------------------------------------


def _observe_depth(_options: Any) -> Iterator[metrics.Observation]:
    from .db import engine as db_engine
    from .db import reads_sql

    try:
        with db_engine.connect() as conn, conn.begin():
            queues, _results = reads_sql.stats(conn)
    except Exception:  # a collection must not crash the app; no data this round
        return
    for queue in queues:
        for state in ("pending", "scheduled", "claimed", "running"):
            yield metrics.Observation(
                getattr(queue, state),
                {"messaging.system": SYSTEM, "messaging.destination.name": queue.queue, "jobtable.state": state},
            )
