"""An application that enqueues Jobs inside a request span, with no
OpenTelemetry setup of its own: run it under ``opentelemetry-instrument``.

    python -m tests.otel_producer native QUEUE   # Echo and Fails, for jobtable worker
    python -m tests.otel_producer celery         # RecordJob, for a Celery worker

Prints nothing itself: stdout is where the console exporter writes.
"""

from __future__ import annotations

import sys

from opentelemetry import trace


def main(argv: list[str]) -> None:
    kind = argv[0]
    # What a web framework's instrumentation would have open around a view.
    with trace.get_tracer("tests.otel_producer").start_as_current_span("request"):
        if kind == "native":
            from tests.sample_jobs import Echo, Fails

            Echo("\u00e9t\u00e9", 1).run_in_worker(queue=argv[1])
            Fails().run_in_worker(queue=argv[1])
        elif kind == "celery":
            from tests import transport_celery_app

            transport_celery_app.RecordJob("traced").run_in_worker(queue=transport_celery_app.QUEUE)
        else:
            raise SystemExit(f"unknown kind {kind!r}: native or celery")


if __name__ == "__main__":
    main(sys.argv[1:])
