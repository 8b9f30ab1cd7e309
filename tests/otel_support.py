"""Running programs under the real ``opentelemetry-instrument`` command, and
reading the spans and metrics its console exporters print."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
INSTRUMENT = str(BIN / "opentelemetry-instrument")
JOBTABLE = str(BIN / "jobtable")
CELERY = str(BIN / "celery")


def instrumented_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    """What a user sets for zero-code instrumentation, with console exporters.

    No OTLP exporter is installed: every signal is given an exporter here, or
    the distro's default (``otlp``) would fail to load.
    """
    out = {key: value for key, value in env.items() if not key.startswith("OTEL_")}
    out.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="jobtable-tests",
        # Each span is one write(): a member and its supervisor share stdout.
        PYTHONUNBUFFERED="1",
    )
    out.update(extra)
    return out


def instrument(argv: list[str], env: dict[str, str], out: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``opentelemetry-instrument ARGV...`` to completion, stdout into ``out``."""
    with out.open("w") as stdout:
        proc = subprocess.run(
            [INSTRUMENT, *argv], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout
        )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr[-5000:]}"
    return proc


@dataclass
class Printed:
    """What the console exporters printed: spans and metric exports."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]

    def points(self, metric: str) -> list[dict[str, Any]]:
        return [
            point
            for export in self.metrics
            for resource in export["resource_metrics"]
            for scope in resource["scope_metrics"]
            for m in scope["metrics"]
            if m["name"] == metric
            for point in m["data"]["data_points"]
        ]


def parse_console(text: str, *, still_writing: bool = False) -> Printed:
    """The JSON documents of the console exporters, one after another.

    A line outside them that does not open a document is kept in ``other``
    (Celery prints its shutdown there); a document cut short is an error.
    ``still_writing``: the program runs on, so its last document may be half
    written; it is left out.
    """
    printed = Printed()
    decoder = json.JSONDecoder()
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return printed
        if text[index] != "{":
            end = text.find("\n", index)
            end = len(text) if end < 0 else end
            printed.other.append(text[index:end])
            index = end
            continue
        try:
            document, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            if still_writing:
                return printed
            raise
        if "resource_metrics" in document:
            printed.metrics.append(document)
        else:
            assert {"name", "context", "kind"} <= set(document), document
            printed.spans.append(document)


def read_console(path: Path, *, still_writing: bool = False) -> Printed:
    return parse_console(path.read_text(), still_writing=still_writing)


def hex_id(value: str | None) -> int | None:
    """The console exporter prints ids as ``0x...`` strings."""
    return None if value is None else int(value, 16)
