"""Connection options from outside the database URL, as libpq parameters.

The database URL's query reaches the driver as libpq parameters
(``?sslmode=verify-full&connect_timeout=5``).  Celery and Kombu configure
a broker connection elsewhere -- ``broker_connection_timeout``
(``Connection(connect_timeout=)``), ``broker_transport_options=
{"connect_timeout": ...}`` and ``broker_use_ssl`` -- and this module turns
those into the same parameters, given to the driver as connection
arguments (``Connect``; the engine's URL stays the URL configured, and
``engine.get_engine`` keeps one engine per URL and SSL options):

* a timeout becomes ``connect_timeout`` (whole seconds, at least 2: libpq
  and psycopg wait at least that long).  Without one psycopg waits 130 s
  for a server that accepts the connection and never answers.
* ``broker_use_ssl`` becomes ``sslmode``/``sslrootcert``/``sslcert``/
  ``sslkey`` (``ssl_option``); keys it cannot map are refused, never
  ignored: a connection believed encrypted must be.

What the URL itself says wins for the timeout (it is the most specific
place); an SSL option that contradicts the URL is an error.  SQLite opens a
file: there is no connection to time out (its lock wait is the separate
busy timeout) or to encrypt, so a timeout is not added and SSL is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from ..exceptions import ConfigurationError

#: libpq waits at least this long (fe-connect.c; psycopg.conninfo too).
MIN_CONNECT_TIMEOUT = 2
#: Drivers that read ``connect_timeout`` as a URL query parameter.
TIMEOUT_BACKENDS = frozenset({"postgresql", "mysql", "mariadb"})

#: The libpq parameters broker_use_ssl may set; given by name they pass as they are.
LIBPQ_SSL_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: Celery's names (Redis: ssl_*; py-amqp: without the prefix) -> libpq.
_FILES = {
    "ssl_ca_certs": "sslrootcert",
    "ca_certs": "sslrootcert",
    "ssl_certfile": "sslcert",
    "certfile": "sslcert",
    "ssl_keyfile": "sslkey",
    "keyfile": "sslkey",
}
_CERT_REQS = ("ssl_cert_reqs", "cert_reqs")
_CHECK_HOSTNAME = ("ssl_check_hostname", "check_hostname")
KNOWN_SSL_KEYS = (*LIBPQ_SSL_KEYS, *_FILES, *_CERT_REQS, *_CHECK_HOSTNAME)
# ssl.CERT_NONE/OPTIONAL/REQUIRED (an IntEnum: equal to these ints), or their names.
_REQS = {0: "none", 1: "optional", 2: "required"}


@dataclass(frozen=True)
class Connect:
    """libpq parameters for an engine, and the settings errors name."""

    #: (parameter, value) pairs: connect_timeout, sslmode...
    params: tuple[tuple[str, str], ...] = ()
    #: The setting that holds the URL.
    url_setting: str = "JOBTABLE_DATABASE_URL"
    #: The setting the connect timeout came from ("": the engine's default).
    timeout_setting: str = ""

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:
        """What makes an engine another one: the SSL parameters.  Not the
        timeout: a Celery worker's transport, result backend and Jobs share
        one pool per database, and its connect timeout is that of the first
        of them (the transport, connecting at start)."""
        return tuple(p for p in self.params if p[0] != "connect_timeout")


def timeout_parameter(seconds: float) -> str:
    """``connect_timeout`` as libpq reads it: whole seconds, at least 2."""
    return str(max(MIN_CONNECT_TIMEOUT, math.ceil(seconds)))


def url_timeout(url: URL) -> float | None:
    """The ``connect_timeout`` of ``url``'s query, if it has a usable one."""
    raw = url.query.get("connect_timeout")
    try:
        value = float(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def ssl_parameters(value: Any, setting: str = "broker_use_ssl") -> dict[str, str]:
    """The libpq parameters of a Celery ``broker_use_ssl`` value.

    ``True`` is Python's default context: the server's certificate checked
    against the system's CAs, host name included (``verify-full``,
    ``sslrootcert=system``).  A dict: ``ssl_cert_reqs`` (``CERT_NONE`` ->
    ``require``: encrypted, unverified; ``CERT_OPTIONAL`` -> ``verify-ca``;
    ``CERT_REQUIRED``, the default -> ``verify-full``, or ``verify-ca`` with
    ``ssl_check_hostname=False``), ``ssl_ca_certs`` -> ``sslrootcert``,
    ``ssl_certfile`` -> ``sslcert``, ``ssl_keyfile`` -> ``sslkey`` (also
    without the ``ssl_`` prefix, as py-amqp spells them), or libpq's own
    ``sslmode``... names.  False, None or ``{}``: nothing (as in Kombu).
    """
    if value is None or value is False or (isinstance(value, Mapping) and not value):
        return {}
    if value is True:
        return {"sslmode": "verify-full", "sslrootcert": "system"}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{setting} must be True, False or a dict of SSL options, not a {type(value).__name__}."
        )
    unknown = sorted(str(k) for k in value if k not in KNOWN_SSL_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{setting} has {', '.join(repr(k) for k in unknown)}, which jobtable cannot apply to a database "
            f"connection (libpq). Use only {', '.join(KNOWN_SSL_KEYS)}; anything else (ciphers, an SSL context...) "
            "has no libpq equivalent and would be silently ignored."
        )
    params: dict[str, str] = {}
    for key, parameter in _FILES.items():
        if value.get(key) not in (None, ""):
            _set(params, parameter, _text(value[key], f"{setting}[{key!r}]"), setting)
    for parameter in ("sslrootcert", "sslcert", "sslkey"):
        if value.get(parameter) not in (None, ""):
            _set(params, parameter, _text(value[parameter], f"{setting}[{parameter!r}]"), setting)
    mode = _mode(value, setting)
    if value.get("sslmode") not in (None, ""):
        given = _text(value["sslmode"], f"{setting}['sslmode']")
        if given not in SSL_MODES:
            raise ConfigurationError(f"{setting}['sslmode'] is {given!r}: use one of {', '.join(SSL_MODES)}.")
        if any(k in value for k in (*_CERT_REQS, *_CHECK_HOSTNAME)) and given != mode:
            raise ConfigurationError(
                f"{setting} says sslmode {given!r} and, through ssl_cert_reqs/ssl_check_hostname, {mode!r}: "
                "give one of them."
            )
        mode = given
    params["sslmode"] = mode
    if mode == "verify-full" and "sslrootcert" not in params:
        # What Python's default context trusts; libpq would read
        # ~/.postgresql/root.crt instead.
        params["sslrootcert"] = "system"
    return params


def _mode(value: Mapping[Any, Any], setting: str) -> str:
    reqs: Any = "required"
    for key in _CERT_REQS:
        if value.get(key) is not None:
            reqs = value[key]
    if isinstance(reqs, int) and not isinstance(reqs, bool) and reqs in _REQS:
        reqs = _REQS[reqs]
    name = reqs.strip().lower().removeprefix("cert_") if isinstance(reqs, str) else None
    if name not in ("none", "optional", "required"):
        raise ConfigurationError(
            f"{setting}['ssl_cert_reqs'] is {reqs!r}: use ssl.CERT_NONE, ssl.CERT_OPTIONAL or ssl.CERT_REQUIRED "
            "(or 'none', 'optional', 'required')."
        )
    check_hostname = True
    for key in _CHECK_HOSTNAME:
        if value.get(key) is not None:
            check_hostname = bool(value[key])
    if name == "none":
        return "require"
    if name == "optional" or not check_hostname:
        return "verify-ca"
    return "verify-full"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        try:
            value = os.fspath(value)  # a pathlib.Path
        except TypeError:
            raise ConfigurationError(f"{what} must be a string (a path), not a {type(value).__name__}.") from None
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a text path, not bytes.")
    return value


def _set(params: dict[str, str], parameter: str, value: str, setting: str) -> None:
    if params.get(parameter, value) != value:
        raise ConfigurationError(f"{setting} gives {parameter} twice, differently ({params[parameter]!r}, {value!r}).")
    params[parameter] = value


def check_against_url(url: URL, params: Mapping[str, str], setting: str) -> None:
    """Refuse ``params`` that cannot apply to ``url``: SSL for a SQLite file,
    a parameter the URL's query gives another value."""
    if not params:
        return
    if url.get_backend_name() == "sqlite":
        raise ConfigurationError(
            f"{setting} asks for SSL, but the database is a SQLite file: there is no network connection to "
            f"encrypt. Unset {setting} (or use a PostgreSQL URL)."
        )
    for key, value in params.items():
        if key in url.query and url.query[key] != value:
            raise ConfigurationError(
                f"{setting} sets {key}={value!r}, but the URL's query says {key}={url.query[key]!r}: keep one of them."
            )
