"""Which names the dashboard answers to, and which links it follows back.

DNS rebinding: a web page on ``evil.example`` re-points its own name at
127.0.0.1, and the victim's browser then sends that page's requests to the
local dashboard, as same-origin requests it may read.  The TCP peer is
loopback, so the address check alone lets them in; only the ``Host``
header still says ``evil.example``.  So in local-only mode the dashboard
answers only to loopback names (and to names the operator allowed), and
checks a POST's Origin against those names, never against the
attacker-controlled Host.

Pure functions over strings: no Starlette here, so they are easy to test
with any text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: A DNS name: dot-separated labels of letters, digits, hyphens and
#: underscores (some internal names have them).  Checked after lowering.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostName:
    #: Lower case, no trailing dot; IPv6 without brackets.
    name: str
    port: int | None

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.name

    def netloc(self, scheme: str | None = None) -> str:
        """``name[:port]``, the port left out when it is ``scheme``'s default."""
        host = f"[{self.name}]" if self.is_ipv6 else self.name
        if self.port is None or (scheme is not None and _DEFAULT_PORTS.get(scheme) == self.port):
            return host
        return f"{host}:{self.port}"


def parse_host(value: str) -> HostName | None:
    """A ``Host`` header (or URL authority without user info): ``name``,
    ``name:port``, ``[v6]``, ``[v6]:port``; any case, one trailing dot
    allowed.  ``None`` for anything else (never raises)."""
    if not isinstance(value, str) or not value or len(value) > 300 or not value.isascii():
        return None
    value = value.lower()
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
                return None
            port = int(rest[1:])
        # No zone ids ("%eth0"): browsers never send them.
        if "%" in name:
            return None
        try:
            name = ipaddress.IPv6Address(name).compressed
        except ValueError:
            return None
    else:
        name, sep, port_text = value.partition(":")
        if sep:
            if not _PORT.fullmatch(port_text):
                return None
            port = int(port_text)
        if name.endswith("."):
            name = name[:-1]
        if not _NAME.fullmatch(name) or len(name) > 253:
            return None
    if port is not None and not 0 < port <= 65535:
        return None
    return HostName(name, port)


def is_loopback_name(host: HostName) -> bool:
    """localhost, any ``*.localhost`` (RFC 6761: browsers resolve these to
    loopback themselves and never ask DNS, so they cannot be rebound),
    127.0.0.0/8 and ::1."""
    if host.name == "localhost" or host.name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@dataclass(frozen=True)
class AllowedHost:
    """One ``allowed_hosts`` entry: ``name``, ``name:port`` or
    ``*.domain`` (its subdomains, any depth)."""

    host: HostName
    subdomains: bool

    def matches(self, host: HostName) -> bool:
        if self.host.port is not None and host.port != self.host.port:
            return False
        if self.subdomains:
            return host.name.endswith("." + self.host.name)
        return host.name == self.host.name


def parse_allowed(entries: Iterable[str]) -> tuple[AllowedHost, ...]:
    """Validate ``allowed_hosts``; a bad entry raises ``ValueError`` naming it."""
    if isinstance(entries, str):
        raise ValueError(
            f"allowed_hosts must be a list of host names, not the string {entries!r}: write [{entries!r}]."
        )
    out = []
    for entry in entries:
        text = str(entry).strip()
        subdomains = text.startswith("*.")
        host = parse_host(text[2:] if subdomains else text)
        if host is None or (subdomains and host.is_ipv6):
            raise ValueError(
                f"allowed_hosts: {text!r} is not a host name; write a name or address as the browser's "
                "address bar shows it, with an optional port: 'dash.example.com', 'dash.example.com:8443', "
                "'*.example.com' (its subdomains), '192.168.1.5', '[fe80::1]:8000'."
            )
        out.append(AllowedHost(host, subdomains))
    return tuple(out)


@dataclass(frozen=True)
class HostPolicy:
    """``local_only``: loopback names are allowed (and required, unless
    listed in ``allowed``).  Not local-only and nothing listed: any name
    (a password guards the dashboard; a rebound page does not have it)."""

    local_only: bool
    allowed: tuple[AllowedHost, ...] = ()

    @property
    def checks(self) -> bool:
        return self.local_only or bool(self.allowed)

    def permits(self, host: HostName) -> bool:
        if self.local_only and is_loopback_name(host):
            return True
        return any(a.matches(host) for a in self.allowed)

    def permits_header(self, value: str | None) -> bool:
        """The request's ``Host`` header (``None``: missing)."""
        if not self.checks:
            return True
        host = parse_host(value) if value is not None else None
        return host is not None and self.permits(host)


def parse_origin(value: str) -> tuple[str, HostName] | None:
    """``scheme://host[:port]`` of an Origin or Referer (http/https only,
    no user info); ``None`` for anything else."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
        return None
    host = parse_host(parts.netloc)
    if host is None:
        return None
    return scheme, host


def origin_matches(origin: str, host_header: str | None, request_scheme: str, policy: HostPolicy) -> bool:
    """A browser's Origin must name a permitted host, and the very host and
    port the request went to (default ports left out on both sides, so a
    TLS-terminating proxy that forwards ``Host`` still matches)."""
    parsed = parse_origin(origin)
    target = parse_host(host_header) if host_header is not None else None
    if parsed is None or target is None:
        return False
    scheme, host = parsed
    if policy.checks and not policy.permits(host):
        return False
    return host.netloc(scheme) == target.netloc(request_scheme)


# -- the "Back" link after an action ----------------------------------------------------

_SAFE_CHARS = re.compile(r"[!-~]*")  # printable ASCII, no space or control


def safe_path(value: str, base: str) -> bool:
    """True for a path on this dashboard (``base`` + ``/...``, with a
    query): nothing a browser or a later decoding step could read as
    another site (``//x``, ``/\\x``, ``https:``, ``javascript:``,
    ``/%2F%2Fx``) or as a path outside the dashboard (``..``)."""
    if not isinstance(value, str) or not value or len(value) > 2000 or not _SAFE_CHARS.fullmatch(value):
        return False
    path, _, _ = value.partition("?")
    path = path.partition("#")[0]
    # Decode until stable: a redirect may be decoded again downstream.
    decoded = path
    for _ in range(4):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        return False
    for form in (path, decoded):
        if not form.startswith("/") or form.startswith("//") or "\\" in form:
            return False
        if not _SAFE_CHARS.fullmatch(form) or any(seg in (".", "..") for seg in form.split("/")):
            return False
    if not (decoded == base or decoded.startswith(base + "/")):
        return False
    return not urlsplit(value).netloc and not urlsplit(decoded).netloc
