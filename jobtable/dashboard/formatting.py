"""Jinja filters: times, durations and stored JSON shown to people."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from markupsafe import Markup, escape

from .. import messages
from ..db import clock


def utcnow() -> datetime:
    # The database's clock: the stored times it is compared with are its.
    return clock.utcnow()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return duration((end - start).total_seconds())


def ts(value: datetime | None) -> Markup:
    """A UTC time in a <time> element (the title holds the full ISO value)."""
    if value is None:
        return Markup("-")
    iso = value.astimezone(timezone.utc).isoformat()
    return Markup(f'<time datetime="{escape(iso)}" title="{escape(iso)}">{value:%Y-%m-%d %H:%M:%S}</time>')


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    delta = ((now or utcnow()) - value).total_seconds()
    if delta < 0:
        return "in " + duration(-delta)
    return duration(delta) + " ago"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def pretty_stored(text: str | None) -> str:
    """A stored JSON text (return value, meta), indented when it parses."""
    if text is None:
        return ""
    try:
        return pretty_json(json.loads(text))
    except ValueError:
        return text


def parameters(message: str | None) -> dict[str, Any]:
    """Arguments of a stored message, or the reason they cannot be shown."""
    if not message:
        return {"error": "No message stored."}
    try:
        call = messages.decode_task(message)
    except Exception as exc:  # noqa: BLE001 - any malformed message is shown, not raised
        return {"error": f"Cannot decode the message: {exc}"}
    return {
        "error": None,
        "args": pretty_json(call.args),
        "kwargs": pretty_json(call.kwargs),
        "headers": pretty_json({k: v for k, v in call.headers.items() if v not in (None, "", [], {})}),
    }


#: Characters of a big text (parameters, return value, traceback) shown on a
#: page; the rest is one click away, as text/plain (views.full_text).
PREVIEW_CHARS = 10_000


def clip(text: str | None) -> dict[str, Any]:
    """The start of ``text`` for a page, and whether (and how much) was cut."""
    text = text or ""
    return {"text": text[:PREVIEW_CHARS], "cut": len(text) > PREVIEW_CHARS, "total": len(text)}


def number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


FILTERS = {
    "duration": duration,
    "between": between,
    "ts": ts,
    "ago": ago,
    "pretty_stored": pretty_stored,
    "number": number,
    "clip": clip,
}
