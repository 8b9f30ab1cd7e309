"""The dashboard ASGI application: ``create_app()``.

Mount it anywhere (``Mount("/jobs", app=create_app(...))`` in Starlette or
FastAPI, Django's ASGI router, Flask through an ASGI-to-WSGI adapter) or run
it alone with ``jobtable dashboard``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from . import actions, formatting, hosts, ratelimit, security, views
from .config import DashboardConfig

HERE = Path(__file__).resolve().parent

# DashboardConfig lives in config.py (below the views and actions that read
# it); it stays importable from here.
__all__ = ["DashboardConfig", "create_app"]


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text, status_code=status, headers=headers)


def _host_refused(value: str | None, local_only: bool) -> Response:
    why = (
        "Without a password it answers only to loopback names (localhost, 127.0.0.1, [::1]), "
        "so that a web page cannot re-point its own name at this machine (DNS rebinding) and "
        "read or change your jobs."
        if local_only
        else "It answers only to the names in its allowed hosts."
    )
    if value is None:
        return _plain(400, "Bad request: no Host header.")
    shown = value[:100].encode("ascii", "backslashreplace").decode()
    host = hosts.parse_host(value)
    name = host.netloc() if host else "NAME"
    return _plain(
        400,
        f"Bad request: the jobtable dashboard does not answer to the host name {shown!r}. "
        f"{why} If this is your dashboard's address, allow it: "
        f"jobtable dashboard --allowed-host {name} (or JOBTABLE_DASHBOARD_ALLOWED_HOSTS={name}), "
        f"or create_app(allowed_hosts=[{name!r}]).",
    )


class _Guard:
    """Runs before anything else, static files included: too many failed
    logins (429), ``authorize`` (401/403), then the Host name (400) -- after
    authorize, so a stranger is told "forbidden", not which names to use."""

    def __init__(
        self,
        app: ASGIApp,
        authorize: security.Authorize,
        policy: hosts.HostPolicy,
        limiter: ratelimit.FailureLimiter,
    ) -> None:
        self.app = app
        self.authorize = authorize
        self.policy = policy
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        address = request.client.host if request.client else ""
        wait = self.limiter.retry_after(address)
        if wait:
            await _plain(
                429,
                f"Too many failed logins from this address; try again in {wait} seconds.",
                {"Retry-After": str(wait)},
            )(scope, receive, send)
            return
        allowed = self.authorize(request)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            if "authorization" in request.headers:
                # Credentials given and refused: a guess.  A request without
                # any is the browser's first try, before it shows the prompt.
                self.limiter.failed(address)
            if getattr(self.authorize, "challenge", False):
                response = _plain(
                    401,
                    "Authentication required.",
                    {"WWW-Authenticate": 'Basic realm="jobtable dashboard", charset="UTF-8"'},
                )
            else:
                response = _plain(
                    403,
                    "Forbidden: the jobtable dashboard allows only local requests unless it is given an "
                    "authorize hook, basic auth or a token.",
                )
            await response(scope, receive, send)
            return
        values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"]
        if len(values) > 1:
            await _plain(400, "Bad request: more than one Host header.")(scope, receive, send)
            return
        host = values[0] if values else None
        if not self.policy.permits_header(host):
            await _host_refused(host, self.policy.local_only)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _SecurityHeaders:
    """No framing (clickjacking on action buttons), no inline script."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.HEADERS if k not in names
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _FullPath:
    """ASGI says ``path`` includes ``root_path``; some adapters (WSGI bridges,
    hand-written dispatchers) strip the prefix instead.  Starlette's routing
    and static files expect the former, so restore it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root = str(scope.get("root_path", "")).rstrip("/")
            path = str(scope["path"])
            if root and path != root and not path.startswith(root + "/"):
                scope = {k: v for k, v in scope.items() if k != "raw_path"}
                scope["path"] = root + path
        await self.app(scope, receive, send)


def _templates() -> Jinja2Templates:
    # Autoescape everything: job arguments, tracebacks and queue names are
    # user data.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(formatting.FILTERS)
    return Jinja2Templates(env=env)


def create_app(
    *,
    authorize: security.Authorize | None = None,
    read_only: bool = False,
    basic_auth: tuple[str, str] | None = None,
    token: str | None = None,
    database_url: str | None = None,
    refresh_seconds: float = 5.0,
    stale_after: float | None = None,
    title: str = "jobtable",
    allowed_hosts: Iterable[str] = (),
    debug: bool = False,
) -> Starlette:
    """The dashboard as an ASGI app.

    Access: ``authorize(request) -> bool`` (sync or async) decides; else
    ``basic_auth=(user, password)`` or ``token=`` (Bearer header, or the
    basic-auth password); else only direct loopback requests are allowed.
    Several of them: any one allows.

    Host names: with no ``authorize``/``basic_auth``/``token`` (or with
    ``authorize=security.loopback_only``) only loopback names are served
    (localhost, ``*.localhost``, 127.0.0.0/8, [::1]) plus ``allowed_hosts``
    (``"name"``, ``"name:port"``, ``"*.domain"``); otherwise any name unless
    ``allowed_hosts`` is given.  A POST's Origin must name an allowed host.

    ``read_only``: no action buttons, and POSTs are refused.
    ``database_url``: the queue database (default: jobtable's settings).
    """
    hooks: list[security.Authorize] = []
    if authorize is not None:
        hooks.append(authorize)
    if basic_auth is not None:
        hooks.append(security.basic_auth(*basic_auth))
    if token:
        hooks.append(security.token_auth(token))
    # Loopback admits a request without any secret: only then can a
    # rebound page get in, so only then are host names restricted by default.
    policy = hosts.HostPolicy(
        local_only=not hooks or authorize is security.loopback_only,
        allowed=hosts.parse_allowed(allowed_hosts),
    )
    if not hooks:
        guard: security.Authorize = security.loopback_only
    elif len(hooks) == 1:
        guard = hooks[0]
    else:
        guard = security.any_of(*hooks)

    if stale_after is None:
        from ..settings import get_settings

        stale_after = float(get_settings().worker_lost_after)
    config = DashboardConfig(
        authorize=guard,
        read_only=read_only,
        database_url=database_url,
        refresh_seconds=refresh_seconds,
        stale_after=timedelta(seconds=stale_after),
        title=title,
        hosts=policy,
    )

    routes = [
        Route("/", views.overview, name="overview"),
        Route("/requests", views.requests_list, name="requests"),
        Route("/requests/{request_id:int}", views.request_detail, name="request"),
        Route("/processes", views.processes, name="processes"),
        Route("/results", views.results_list, name="results"),
        Route("/results/{result_id:int}", views.result_detail, name="result"),
        Route("/{kind:str}/{row_id:int}/full/{part:str}", views.full_text, name="full_text"),
        Route("/workers", views.workers_list, name="workers"),
        Route("/schedules", views.schedules_list, name="schedules"),
        Route("/actions/{action}", actions.perform, methods=["POST"], name="action"),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(debug=debug, routes=routes)
    app.state.config = config
    app.state.templates = _templates()
    #: Failed logins per client address (reachable for tests and embedders).
    app.state.auth_limiter = limiter = ratelimit.FailureLimiter()
    app.add_middleware(_Guard, authorize=guard, policy=policy, limiter=limiter)
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(_FullPath)
    return app

