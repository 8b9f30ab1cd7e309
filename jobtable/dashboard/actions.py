"""Actions (POST): retry, cancel, revoke, un-revoke, delete, run now.

Every action is two steps.  The first POST (from a button, possibly with
many selected rows) renders a confirmation page naming what will be done;
only its "confirm" POST acts.  Both steps need the CSRF token, and nothing
is accepted in read-only mode.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..db import engine as db_engine
from ..exceptions import JobtableError
from . import hosts, queries, security
from .action_table import ACTIONS, Action
from .config import config_of
from .pages import base_path, error_page, reading, render

#: Most rows one bulk action touches (a page is 50).
MAX_IDS = 500


def _ids(kind: str, values: list[str]) -> list[Any]:
    out: list[Any] = []
    for value in values[:MAX_IDS]:
        if kind in ("schedule", "task"):
            if value.strip():
                out.append(value.strip()[:255])
            continue
        try:
            out.append(int(value))
        except ValueError:
            continue
    return list(dict.fromkeys(out))


def _safe_next(request: Request, value: str | None, default: str) -> str:
    """Only paths inside the dashboard: no open redirect."""
    return value if value and hosts.safe_path(value, base_path(request)) else default


def _labels(conn: Connection, kind: str, ids: list[Any]) -> list[str]:
    labels = []
    for item in ids[:MAX_IDS]:
        if kind == "result":
            row = queries.result_by_id(conn, item)
            labels.append(
                f"{row.task_name} {row.task_id} attempt {row.attempt} ({row.status})" if row else f"result {item} (gone)"
            )
        elif kind == "request":
            row = queries.request_by_id(conn, item)
            labels.append(f"{row.task_name} {row.task_id} ({row.state})" if row else f"job {item} (gone)")
        else:
            labels.append(str(item))
    return labels


def _act(request: Request, action: Action, ids: list[Any]) -> queries.ActionReport:
    engine = db_engine.get_engine(config_of(request).database_url)
    if action.kind == "schedule":
        # Run-now enqueues through the Job API in its own transaction.
        return action.run(None, ids)  # type: ignore[arg-type]
    with db_engine.connect(engine) as conn, conn.begin():
        return action.run(conn, ids)


async def perform(request: Request) -> Response:
    config = config_of(request)
    name = request.path_params["action"]
    action = ACTIONS.get(name)
    if action is None:
        return error_page(request, 404, "Unknown action.")
    if config.read_only:
        return error_page(request, 403, "The dashboard is read-only.")
    form = await request.form()
    if not security.csrf_ok(request, str(form.get(security.CSRF_FIELD) or ""), config.hosts):
        return error_page(
            request, 403, "The form expired or did not come from this dashboard (CSRF check failed). Reload the page."
        )
    ids = _ids(action.kind, [str(v) for v in form.getlist("ids")])
    back = _safe_next(request, str(form.get("next") or ""), base_path(request) + "/")
    if not ids:
        return error_page(request, 400, "Nothing selected.")
    try:
        if form.get("confirmed") != "1":

            def labels() -> list[str]:
                with reading(request) as conn:
                    return _labels(conn, action.kind, ids)

            return render(
                request,
                "confirm.html",
                {
                    "active": "",
                    "action_name": name,
                    "action": action,
                    "ids": ids,
                    "labels": await run_in_threadpool(labels),
                    "next": back,
                },
            )
        report = await run_in_threadpool(_act, request, action, ids)
    except JobtableError as exc:
        return error_page(request, 503, str(exc))
    if report.skipped:
        return render(
            request, "done.html", {"active": "", "action": action, "report": report, "next": back}
        )
    sep = "&" if "?" in back else "?"
    return RedirectResponse(back + sep + urlencode({"done": name, "n": len(report.done)}), status_code=303)
