"""``JobtableInstrumentor``: OpenTelemetry for jobtable, as the ecosystem does it.

A ``BaseInstrumentor`` of ``opentelemetry-instrumentation``, registered under
the ``opentelemetry_instrumentor`` entry point ``jobtable``, so that

    opentelemetry-instrument jobtable worker

(with ``opentelemetry-distro`` and an exporter installed) traces enqueues and
job runs with no code change, and ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtable``
leaves them off.  Programmatically::

    JobtableInstrumentor().instrument()   # optional: tracer_provider=..., meter_provider=...

The spans and metrics themselves live in ``jobtable.telemetry``, below this
module, which the enqueue path and the worker import: only an application
that instruments jobtable loads ``opentelemetry-instrumentation``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Collection
from typing import Any

# The module opens with a file-wide ``# type: ignore``, so mypy sees none of
# its names: BaseInstrumentor is untyped here.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from . import telemetry

#: What this instrumentor instruments: the jobtable distribution whose
#: enqueue path and worker call the hooks of ``jobtable.telemetry``.
REQUIREMENT = "jobtable >= 0.1"


def _installed() -> bool:
    try:
        importlib.metadata.distribution("jobtable")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class JobtableInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces and meters jobtable's enqueues and job runs.

    ``instrument(tracer_provider=..., meter_provider=...)``; without them the
    global providers.  As every ``BaseInstrumentor``, it is a singleton and a
    second ``instrument()`` before ``uninstrument()`` is a logged no-op.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        # Run from a source tree (no installed distribution), the check would
        # call jobtable missing while it is the very package running it.
        return (REQUIREMENT,) if _installed() else ()

    def _instrument(self, **kwargs: Any) -> None:
        telemetry.enable(kwargs.get("tracer_provider"), kwargs.get("meter_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        telemetry.disable()


__all__ = ["JobtableInstrumentor"]
