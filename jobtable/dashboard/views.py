"""The dashboard's pages (GET).  Plain functions: Starlette runs them in its
thread pool, so the synchronous database calls never block the event loop.

Every page has a "live" part that the browser re-fetches every few seconds
with the ``X-Jobtable-Fragment`` header; the same view then renders only that
part (``live_*.html``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..db import tables
from . import charts, formatting, queries, revokes, schedules
from .config import config_of
from .pages import error_page, guarded, reading, render

#: Time windows of the overview cards and charts.
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"


def _arg(request: Request, name: str, allowed: Any = None) -> str | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if allowed is not None and value not in allowed:
        return None
    return value[:255]


@guarded
def overview(request: Request) -> Response:
    window_name = _arg(request, "window", WINDOWS) or DEFAULT_WINDOW
    window = WINDOWS[window_name]
    now = formatting.utcnow()
    with reading(request) as conn:
        depths = queries.queue_depths(conn)
        buckets = queries.buckets(conn, now=now, window=window)
    counts, retried = queries.window_totals(buckets)
    totals = {
        "pending": sum(q.pending for q in depths),
        "scheduled": sum(q.scheduled for q in depths),
        "running": sum(q.running for q in depths),
    }
    cards = [
        ("pending", "Pending", totals["pending"], "/requests?state=pending"),
        ("scheduled", "Scheduled", totals["scheduled"], "/requests?state=scheduled"),
        ("running", "Running", totals["running"], "/processes"),
        ("successful", "Successful", counts[tables.SUCCESSFUL], "/results?status=SUCCESSFUL"),
        ("errored", "Errored", counts[tables.ERRORED], "/results?status=ERRORED"),
        ("lost", "Lost", counts[tables.LOST], "/results?status=LOST"),
        ("quarantined", "Quarantined", counts[tables.QUARANTINED], "/results?status=QUARANTINED"),
        ("dead-letter", "Dead letters", counts[tables.DEAD_LETTER], "/results?status=DEAD_LETTER"),
        ("retried", "Retried", retried, "/results?retried=1"),
    ]
    return render(
        request,
        "overview.html",
        {
            "active": "overview",
            "window": window_name,
            "windows": list(WINDOWS),
            "cards": cards,
            "depths": depths,
            "routed": _routed_queues(),
            "throughput_svg": charts.throughput(buckets),
            "wait_svg": charts.queue_wait(buckets),
        },
        live="live_overview.html",
    )


def _routed_queues() -> list[tuple[str, str, int | None]]:
    """(queue, broker shown without its password, ready messages or None)
    of the queues routed to a broker (issue 18); their jobs are not rows."""
    from ..settings import get_settings

    routed = get_settings().broker_routes
    if not routed:
        return []
    from ..routing import publish, routes

    depths = publish.depths(sorted(routed))
    return [(name, routes.display(routed[name]), depths.get(name)) for name in sorted(routed)]


@guarded
def requests_list(request: Request) -> Response:
    state = _arg(request, "state", (tables.PENDING, tables.SCHEDULED)) or tables.PENDING
    queue = _arg(request, "queue")
    task_name = _arg(request, "job")
    cursor = _arg(request, "cursor")
    with reading(request) as conn:
        lister = queries.pending_page if state == tables.PENDING else queries.scheduled_page
        page = lister(conn, queue=queue, task_name=task_name, cursor=cursor)
    return render(
        request,
        "requests.html",
        {
            "active": "requests",
            "state": state,
            "queue": queue or "",
            "job": task_name or "",
            "page": page,
            "cursor": cursor,
        },
        live="live_requests.html",
    )


@guarded
def request_detail(request: Request) -> Response:
    request_id = int(request.path_params["request_id"])
    with reading(request) as conn:
        row = queries.request_by_id(conn, request_id)
        attempts = queries.attempts_of_task(conn, row.task_id) if row is not None else []
        revoked = row is not None and revokes.is_revoked(conn, row.task_id, formatting.utcnow())
        progress = queries.progress_of(conn, row.task_id, row.attempt) if row is not None else None
    if row is None:
        return error_page(request, 404, f"No waiting or running job has id {request_id}; it may have finished.")
    if progress is not None and progress["meta"] is not None:
        progress["meta"] = formatting.pretty_json(progress["meta"])
    # The running attempt's custom-state row is shown as its progress, not as an earlier attempt.
    attempts = [a for a in attempts if a.attempt < row.attempt]
    return render(
        request,
        "request_detail.html",
        {
            "active": "requests",
            "row": row,
            "params": _parameters(request, row.message),
            "attempts": attempts,
            "revoked": revoked,
            "progress": progress,
        },
        live="live_request_detail.html",
    )


def _is_fragment(request: Request) -> bool:
    return request.headers.get("x-jobtable-fragment") == "1"


def _parameters(request: Request, message: str | None) -> dict[str, Any]:
    # The live refresh re-renders only the small facts: decoding (and
    # indenting) a 10 MB message every few seconds would be for nothing.
    return {} if _is_fragment(request) else formatting.parameters(message)


#: Parts shown cut on a detail page, in full at .../full/<part>.
FULL_PARTS = {"args", "kwargs", "headers", "return-value", "error-message", "traceback"}


@guarded
def full_text(request: Request) -> Response:
    """One big part of a request or result, whole, as text/plain (never
    HTML: the browser shows it as text, ``nosniff`` keeps it so)."""
    kind = request.path_params["kind"]
    row_id = int(request.path_params["row_id"])
    part = request.path_params["part"]
    if kind not in ("requests", "results") or part not in FULL_PARTS:
        return error_page(request, 404, "No such part.")
    with reading(request) as conn:
        row = queries.request_by_id(conn, row_id) if kind == "requests" else queries.result_by_id(conn, row_id)
    if row is None:
        return error_page(request, 404, f"Nothing has id {row_id}; it may have finished or been cleared.")
    if part in ("args", "kwargs", "headers"):
        decoded = formatting.parameters(row.message)
        text = decoded["error"] or decoded[part]
    elif kind == "requests":
        return error_page(request, 404, "A waiting job has no outcome yet.")
    elif part == "return-value":
        text = formatting.pretty_stored(row.return_value)
    else:
        text = (row.error_message if part == "error-message" else row.traceback) or ""
    # NUL and lone surrogates cannot go out as UTF-8 text: shown escaped.
    body = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace")
    return Response(
        body,
        media_type="text/plain; charset=utf-8",
        headers={"cache-control": "no-store", "content-disposition": "inline"},
    )


@guarded
def processes(request: Request) -> Response:
    queue = _arg(request, "queue")
    with reading(request) as conn:
        rows = queries.running(conn, queue=queue)
    by_worker: dict[str, list[Any]] = {}
    for row in rows:
        by_worker.setdefault(row.worker_id or "?", []).append(row)
    return render(
        request,
        "processes.html",
        {"active": "processes", "by_worker": sorted(by_worker.items()), "total": len(rows), "queue": queue or ""},
        live="live_processes.html",
    )


@guarded
def results_list(request: Request) -> Response:
    flt = queries.ResultFilter(
        status=_arg(request, "status", tables.RESULT_STATUSES),
        queue=_arg(request, "queue"),
        task_name=_arg(request, "job"),
        uuid=_arg(request, "uuid"),
        retried=_arg(request, "retried") == "1",
    )
    cursor = _arg(request, "cursor")
    with reading(request) as conn:
        page = queries.results_page(conn, flt, cursor)
        waiting = queries.requests_of_task(conn, flt.uuid) if flt.uuid else []
    return render(
        request,
        "results.html",
        {
            "active": "results",
            "flt": flt,
            "statuses": tables.RESULT_STATUSES,
            "page": page,
            "cursor": cursor,
            "waiting": waiting,
        },
        live="live_results.html",
    )


@guarded
def result_detail(request: Request) -> Response:
    result_id = int(request.path_params["result_id"])
    with reading(request) as conn:
        row = queries.result_by_id(conn, result_id)
        if row is None:
            attempts, waiting = [], []
        else:
            attempts = queries.attempts_of_task(conn, row.task_id)
            waiting = queries.requests_of_task(conn, row.task_id)
    if row is None:
        return error_page(request, 404, f"No result has id {result_id}; it may have been cleared.")
    latest = attempts[-1] if attempts else None
    return render(
        request,
        "result_detail.html",
        {
            "active": "results",
            "row": row,
            "params": _parameters(request, row.message),
            "attempts": attempts,
            "waiting": waiting,
            # Only the latest attempt of a task that is not waiting again can be retried.
            "can_retry": not waiting and latest is not None and latest.id == row.id,
        },
        live="live_result_detail.html",
    )


@guarded
def workers_list(request: Request) -> Response:
    config = config_of(request)
    now = formatting.utcnow()
    with reading(request) as conn:
        rows = queries.workers(conn, now=now, stale_after=config.stale_after)
    return render(
        request,
        "workers.html",
        {
            "active": "workers",
            "workers": rows,
            "live_count": sum(1 for w in rows if w.live),
            "stale_count": sum(1 for w in rows if not w.live),
        },
        live="live_workers.html",
    )


@guarded
def schedules_list(request: Request) -> Response:
    now = formatting.utcnow()
    with reading(request) as conn:
        entries, note = schedules.entries(conn, now)
    return render(
        request,
        "schedules.html",
        {"active": "schedules", "entries": entries, "note": note},
        live="live_schedules.html",
    )

