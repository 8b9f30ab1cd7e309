"""Who may see the dashboard, and proof that a POST came from its own pages.

Access: an ``authorize(request) -> bool`` callable decides.  Without one,
only requests from the loopback interface are allowed, and not when they
carry proxy headers (a reverse proxy on the same host would otherwise make
every visitor look local).  ``basic_auth`` and ``token`` build such a
callable.

CSRF: a random token lives in a cookie (SameSite=Strict, HttpOnly) and is
repeated in every form; a POST must carry both, equal, and an Origin header
(else a Referer), when the browser sends one, naming a permitted host (see
``hosts``), the very one the request went to.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import Union
from starlette.requests import Request

from . import hosts

#: ``authorize`` may be sync or async.
Authorize = Callable[[Request], Union[bool, Awaitable[bool]]]

CSRF_COOKIE = "jobtable_csrf"
CSRF_FIELD = "csrf_token"
PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


def is_loopback(request: Request) -> bool:
    """True for a direct request from this machine."""
    if any(h in request.headers for h in PROXY_HEADERS):
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_only(request: Request) -> bool:
    return is_loopback(request)


def basic_auth(username: str, password: str) -> Authorize:
    """An ``authorize`` hook that asks the browser for a user and password."""
    expected = f"{username}:{password}".encode()

    def check(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, expected)

    check.challenge = True  # type: ignore[attr-defined]
    return check


def token_auth(token: str) -> Authorize:
    """An ``authorize`` hook for a shared secret: ``Authorization: Bearer
    <token>`` (scripts), or the token as the basic-auth password with any
    user name (browsers)."""
    expected = token.encode()

    def check(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), expected)
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given.partition(b":")[2], expected)
        return False

    check.challenge = True  # type: ignore[attr-defined]
    return check


def any_of(*hooks: Authorize) -> Authorize:
    """Allowed when one of ``hooks`` allows (each may be sync or async)."""

    async def check(request: Request) -> bool:
        for hook in hooks:
            allowed = hook(request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if allowed:
                return True
        return False

    check.challenge = any(getattr(h, "challenge", False) for h in hooks)  # type: ignore[attr-defined]
    return check


# -- CSRF -------------------------------------------------------------------------


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token_of(request: Request) -> str | None:
    token = request.cookies.get(CSRF_COOKIE)
    return token if token and len(token) >= 32 else None


def same_origin(request: Request, policy: hosts.HostPolicy) -> bool:
    """A browser's Origin (else Referer) must name a permitted host, the one
    it posts to; the Host header alone proves nothing (DNS rebinding)."""
    origin = request.headers.get("origin")
    if origin is None:
        origin = request.headers.get("referer")
    if origin is None:
        # Non-browser clients send neither; the token check still applies.
        return True
    return hosts.origin_matches(origin, request.headers.get("host"), str(request.scope.get("scheme", "http")), policy)


def csrf_ok(request: Request, submitted: str | None, policy: hosts.HostPolicy) -> bool:
    cookie = csrf_token_of(request)
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode()) and same_origin(request, policy)
