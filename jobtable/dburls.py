"""Database URLs as text: parse them strictly, render them without secrets.

One place decides how a URL is read (by the engine, the Kombu transport and
the result backend) and how it is shown (error messages, ``as_uri()``, logs),
so that a password never reaches a message, a log line or a broadcast.

Why stricter than SQLAlchemy: where two parsers read one URL differently,
the password ends up in the wrong field -- and from there in a host name or a
port that is printed.  A password with an unescaped ``@`` is read by
SQLAlchemy up to its first ``@`` and by urllib (Kombu, Celery) up to its last;
an unescaped ``/``, ``?`` or ``#`` ends the host part for urllib but not for
SQLAlchemy.  Such URLs are refused, with the fix and without the password.
An unescaped ``:`` in the password is fine (RFC 3986 allows it, and
SQLAlchemy, urllib and libpq all split user and password at the first one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .exceptions import ConfigurationError

#: Query parameters libpq reads as secrets (``?password=`` works too).
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})
#: Example URLs shown in error messages.
URL_EXAMPLES = (
    "postgresql+psycopg://user:password@localhost/dbname, mysql://user:password@localhost/dbname "
    "or sqlite:///path/to/jobtable.sqlite3"
)
#: The MySQL/MariaDB drivers jobtable runs on; a bare ``mysql://`` or
#: ``mariadb://`` means the first (mysqlclient, the ``mysql`` extra: see
#: dialects/mysql.py for why).
MYSQL_DRIVERS = ("mysqldb", "pymysql")
#: What ``render`` shows instead of a secret by default.
MASK = "***"

Query = dict[str, str | tuple[str, ...]]


def parse(raw: str, what: str = "The database URL") -> URL:
    """``raw`` as a SQLAlchemy URL; ConfigurationError (naming ``what``, never
    echoing a password) when it is ambiguous or malformed."""
    if "\x00" in raw:
        raise ConfigurationError(f"{what} contains a NUL character (\\x00): remove it.")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate: bytes that were not UTF-8 (os.environ keeps them so).
        raise ConfigurationError(
            f"{what} is not valid UTF-8 text: percent-encode the bytes of its password (e.g. %C3%A9)."
        ) from None
    check_text(raw, what)
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(f"{what} {redact(raw)!r} is not a database URL. Use {URL_EXAMPLES}.") from None
    except ValueError:  # int(port); the value is not shown, it may hold a password's end
        raise ConfigurationError(
            f"{what} {redact(raw)!r} has a port that is not a number. Use {URL_EXAMPLES}, "
            "percent-encoding special characters of the password."
        ) from None
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"{what} {redact(raw)!r} has port {url.port}: use a port from 1 to 65535.")
    return url


def check_text(raw: str, what: str = "The database URL") -> None:
    """Refuse URLs whose user name or password SQLAlchemy and urllib would
    read differently (see the module docstring)."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return  # not a URL at all: make_url says so
    authority = rest[: _authority_end(rest)]
    if authority.count("@") > 1:
        raise ConfigurationError(
            f"{what} ({redact(raw)!r}) has an unescaped '@' in its user name or password: "
            "percent-encode it as %40, for example with urllib.parse.quote(password, safe='')."
        )
    if "@" not in authority and _SQLA_USERINFO.match(rest):
        # "user:pa/ss@host": urllib ends the host part at the "/", SQLAlchemy
        # reads a password up to the "@"; "host:5432/db?x=a@b" the other way.
        raise ConfigurationError(
            f"{what} ({redact(raw)!r}) is ambiguous: percent-encode a '/', '?' or '#' in the password "
            "(%2F, %3F, %23) and an '@' in the database name or a query value (%40), "
            "for example with urllib.parse.quote(password, safe='')."
        )


#: The user name and password as SQLAlchemy's URL pattern reads them.
_SQLA_USERINFO = re.compile(r"[^:/]*(?::[^@]*)?@")


def _authority_end(rest: str) -> int:
    """Where the host part of ``rest`` (the URL after ``://``) ends, as
    urllib reads it: at the first ``/``, ``?`` or ``#``."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends) if ends else len(rest)


def redact(raw: str) -> str:
    """Best-effort display of a URL that may not parse.

    Everything before the last ``@`` loses its password (a password may hold
    any character, so over-masking is the safe side), a port that is not a
    number is masked (``user:secret/host`` with the ``@`` forgotten), and so
    are secret query values.
    """
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return "<not a URL>" if "@" in raw or ":" in raw else raw
    at = rest.rfind("@")
    if at >= 0:
        creds, tail = rest[:at], rest[at + 1 :]
        user = creds.split(":", 1)[0]
        if any(c in user for c in "/?#"):
            user = ""
        shown = f"{user}:{MASK}@" if ":" in creds or user != creds else f"{user}@"
    else:
        shown, tail = "", rest
        end = _authority_end(tail)
        host, colon, port = tail[:end].rpartition(":")
        if colon and not port.isdigit() and not tail[:end].endswith("]"):
            tail = f"{host}:{MASK}{tail[end:]}"
    head, query_sep, query = tail.partition("?")
    return f"{scheme}://{shown}{head}" + (f"?{_redact_query_text(query)}" if query_sep else "")


def _redact_query_text(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs])


def secret_free(url: URL) -> URL:
    """``url`` without its password and secret query parameters."""
    # Not set(password=None): set() ignores None.
    query = {k: v for k, v in url.query.items() if k.lower() not in SECRET_QUERY_KEYS}
    return url._replace(password=None).set(query=query)


def render(url: URL, *, hide_password: bool = True, mask: str = MASK) -> str:
    """``url`` as text; with ``hide_password`` the password and the secret
    query parameters read ``mask`` (SQLAlchemy's own rendering leaves
    ``?password=`` visible)."""
    if not hide_password:
        return url.render_as_string(hide_password=False)
    # A placeholder SQLAlchemy does not percent-encode, replaced afterwards:
    # set(password="**") would render "%2A%2A".
    query: Query = {k: (_PLACEHOLDER if k.lower() in SECRET_QUERY_KEYS else v) for k, v in url.query.items()}
    shown = url.set(query=query, password=None if url.password is None else _PLACEHOLDER)
    return shown.render_as_string(hide_password=False).replace(_PLACEHOLDER, mask)


_PLACEHOLDER = "jobtable-masked-b3f1c2"


def query_text(query: Mapping[str, str | Sequence[str]]) -> str:
    """A query mapping as ``a=1&b=2`` (repeated keys kept, order as given)."""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        for item in (value,) if isinstance(value, str) else value:
            pairs.append((key, item))
    return urlencode(pairs)


def parse_query_text(text: str) -> Query:
    """The inverse of ``query_text``."""
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        query.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else tuple(v) for k, v in query.items()}


#: How a libpq multi-host URL is written, for errors.
MULTIHOST_EXAMPLE = (
    "postgresql+psycopg://user:password@/dbname?host=db-a:5432&host=db-b:5432&target_session_attrs=read-write "
    "(or ?host=db-a,db-b&port=5432,5432)"
)


def check_hosts(url: URL, what: str) -> None:
    """A PostgreSQL URL's hosts in its query (libpq's multi-host form,
    for failover) read as SQLAlchemy's psycopg dialect will read them when
    it connects: refused now, naming ``what``, rather than at the first
    connection of a worker."""
    if "host" not in url.query and "port" not in url.query:
        return
    from sqlalchemy.dialects.postgresql.base import PGDialect

    try:
        # The dialect's own split (what it hands libpq), not a second parser.
        hosts, ports = PGDialect()._split_multihost_from_url(url)  # type: ignore[no-untyped-call]
    except ArgumentError as exc:
        raise ConfigurationError(
            f"{what} {render(url)!r} has hosts or ports in its query that cannot be read ({exc}). "
            f"Write {MULTIHOST_EXAMPLE}."
        ) from None
    for host in hosts or ():
        if not host:
            raise ConfigurationError(f"{what} {render(url)!r} names an empty host in its query. Write {MULTIHOST_EXAMPLE}.")
    for port in ports or ():
        if port is not None and not 0 < port < 65536:
            raise ConfigurationError(
                f"{what} {render(url)!r} has port {port} in its query: use ports from 1 to 65535, "
                f"as in {MULTIHOST_EXAMPLE}."
            )


def normalize_url(url: str | URL, what: str = "The database URL (JOBTABLE_DATABASE_URL)") -> URL:
    """Parse a database URL and pick the driver jobtable supports.

    ``postgresql://`` and ``postgres://`` mean psycopg 3; ``mysql://`` and
    ``mariadb://`` mean mysqlclient (``mysql+pymysql://`` is accepted too),
    always as SQLAlchemy's ``mysql`` dialect, which serves both servers; a
    ``jobtable+`` prefix (Kombu broker URLs) is dropped.  Errors name ``what`` and never
    show the password (see ``urls``).
    """
    # str(URL) masks the password (SQLAlchemy 2): render it whole.
    raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigurationError(f"{what} is empty. Set it to {URL_EXAMPLES}.")
    raw = raw.strip()
    if raw.startswith("jobtable+"):
        raw = raw[len("jobtable+") :]
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    parsed = parse(raw, what)
    backend = parsed.get_backend_name()
    driver = parsed.get_driver_name()
    if backend == "postgresql":
        if driver not in ("psycopg", "psycopg2", "") and "+" in parsed.drivername:
            raise ConfigurationError(
                f"jobtable talks to PostgreSQL through psycopg 3, not {driver!r}: "
                f"write postgresql+psycopg://... (got {render(parsed)!r} in {what})."
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
        check_hosts(parsed, what)
    elif backend in ("mysql", "mariadb"):
        if "+" in parsed.drivername and driver not in MYSQL_DRIVERS:
            raise ConfigurationError(
                f"jobtable talks to MySQL and MariaDB through mysqlclient (or PyMySQL), not {driver!r}: "
                f"write mysql://... or mysql+pymysql://... (got {render(parsed)!r} in {what})."
            )
        # One SQLAlchemy dialect name ("mysql") for both servers: SQLAlchemy
        # tells MariaDB apart from the server's version string anyway.
        parsed = parsed.set(drivername=f"mysql+{driver if '+' in parsed.drivername else MYSQL_DRIVERS[0]}")
    elif backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigurationError(
                f"jobtable needs a SQLite file that workers can share, not an in-memory database ({what}): "
                "use sqlite:///path/to/jobtable.sqlite3."
            )
        parsed = parsed.set(drivername="sqlite")
    else:
        raise ConfigurationError(
            f"jobtable supports PostgreSQL, MySQL/MariaDB and SQLite, not {backend!r} "
            f"({render(parsed)!r} in {what}). Use {URL_EXAMPLES}."
        )
    return parsed
