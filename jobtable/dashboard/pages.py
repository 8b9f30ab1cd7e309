"""What every dashboard page shares: the read transaction, the mount path,
rendering (with the CSRF cookie and the notice of a done action), the error
page and the guard that turns database errors into it.  Below the GET views
and the POST actions, which both render through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from ..db import engine as db_engine
from ..exceptions import JobtableError
from ..registry import jobs_registry
from . import formatting, security
from .action_table import ACTIONS
from .config import config_of

NAV = [
    ("overview", "Overview", "/"),
    ("requests", "Requests", "/requests"),
    ("processes", "Processes", "/processes"),
    ("results", "Results", "/results"),
    ("workers", "Workers", "/workers"),
    ("schedules", "Schedules", "/schedules"),
]


@contextmanager
def reading(request: Request) -> Iterator[Connection]:
    """A read transaction on the queue database.  On SQLite it is DEFERRED:
    looking at the queue must not take the writers' lock."""
    engine = db_engine.get_engine(config_of(request).database_url)
    with db_engine.connect(engine) as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        with conn.begin():
            yield conn


def base_path(request: Request) -> str:
    """Where the dashboard is mounted ("" at the root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _here(request: Request) -> str:
    """This page's path and query, without a previous action's notice."""
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in ("done", "n")])
    return base_path(request) + route_path(request) + (f"?{query}" if query else "")


def route_path(request: Request) -> str:
    """The path inside the dashboard.  ASGI servers and adapters disagree on
    whether ``path`` includes ``root_path``; accept both."""
    path = str(request.scope["path"])
    root = str(request.scope.get("root_path", "")).rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path or "/"


def _flash(request: Request) -> str | None:
    """The notice after a redirect: built from a known action name and a
    number only, so a crafted link cannot put words on the page."""
    action = ACTIONS.get(request.query_params.get("done", ""))
    n = request.query_params.get("n", "")
    if action is None or not n.isdigit():
        return None
    return f"{action.verb}: done for {int(n)} item(s)."


def _job_names() -> list[str]:
    """Registered job names, offered as filter suggestions (no query)."""
    return jobs_registry.names()


def render(request: Request, template: str, context: dict[str, Any], *, live: str | None = None) -> Response:
    """Render a page, or only its live part for a fragment request; make
    sure the browser holds a CSRF cookie for the page's forms."""
    config = config_of(request)
    csrf = security.csrf_token_of(request) or security.new_csrf_token()
    base = base_path(request)
    ctx = {
        "request": request,
        "config": config,
        "base": base,
        "csrf_token": csrf,
        "csrf_field": security.CSRF_FIELD,
        "nav": NAV,
        "now": formatting.utcnow(),
        "job_names": _job_names(),
        "here": _here(request),
        "flash": _flash(request),
        "live_template": live,
        **context,
    }
    fragment = live is not None and request.headers.get("x-jobtable-fragment") == "1"
    page = live if fragment and live is not None else template  # fragment implies live
    templates: Jinja2Templates = request.app.state.templates
    response = templates.TemplateResponse(request, page, ctx)
    if security.csrf_token_of(request) != csrf:
        response.set_cookie(
            security.CSRF_COOKIE,
            csrf,
            path=(base or "") + "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    response.headers["cache-control"] = "no-store"
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request,
        "error.html",
        {
            "request": request,
            "config": config_of(request),
            "base": base_path(request),
            "nav": NAV,
            "active": "",
            "message": message,
            "live_template": None,
            "flash": None,
            "now": formatting.utcnow(),
        },
        status_code=status,
    )


def guarded(view: Any) -> Any:
    """Database errors become a readable page, not a stack trace."""

    def wrapper(request: Request) -> Response:
        try:
            return view(request)  # type: ignore[no-any-return]
        except JobtableError as exc:
            return error_page(request, 503, str(exc))

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper
