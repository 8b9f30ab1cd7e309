"""The broker URL in Kombu's own fields, and back.

Kombu splits ``jobtable+postgresql+psycopg://user:pw@host:5432/db`` at the
first ``+`` and keeps the whole database URL, password included, as the
connection's ``hostname`` -- which Celery broadcasts (``celery inspect
stats``, Flower).  ``adopt`` moves the URL into the fields an AMQP URL fills
(hostname, port, userid, password, virtual_host), as Kombu's URL parser would,
so that ``hostname`` is a host, ``conn.port`` a port, ``info()`` shows no
password and ``as_uri()`` masks it; the SQLAlchemy URL is rebuilt from those
fields.

* ``virtual_host`` is the database (a SQLite path, ``/`` for none), followed
  by ``?query`` when the URL has one (``?sslmode=require``): Kombu has no
  field for it, and the query must survive failover and ``clone()``.
* Secrets that would land in a broadcast field other than ``password`` --
  the passwords of failover alternates (``url1;url2``, shown by
  ``info()['alternates']``) and secret query values (``?sslpassword=``) --
  are written as references (``jobtable-secret-<process>-<n>``) that only
  this process and its forks resolve.  Alternates are also rewritten so that
  Kombu's ``switch()`` parses them back into the same fields.
* ``?password=`` becomes the password.

The fields are set when the connection's transport is created (the first
``connect()``, ``info()``, ``as_uri()``, ``repr()``, channel...): Kombu gives
a transport no earlier hook.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL

from ..db import engine as db_engine
from .. import dburls as urls
from ..exceptions import ConfigurationError

PREFIX = "jobtable+"
WHAT = "The broker URL"
#: Kombu's virtual_host when the URL names no database.
NO_DATABASE = "/"

#: Secrets behind the references written into broadcast fields, and back.
_SECRETS: dict[str, str] = {}
_REFERENCES: dict[str, str] = {}
_REFERENCE_PREFIX = f"jobtable-secret-{uuid.uuid4().hex[:8]}-"
#: Driver names by the fields that identify a URL (``_key``), for a clone()
#: made before the transport existed (see ``_from_fields``).  Not secret.
_DRIVERS: dict[tuple[Any, ...], str] = {}
#: Alternates as ``alternate_text`` wrote them (SQLAlchemy would read their
#: path, the virtual_host, as the database).
_REWRITTEN: set[str] = set()
_lock = threading.Lock()


def adopt(client: Any) -> URL:
    """The database URL of the Kombu connection ``client``, whose fields are
    set (or re-read) as described in the module docstring."""
    hostname = client.hostname or ""
    if "://" in hostname:
        # Connection("jobtable+postgresql+psycopg://...") before adoption.
        raw = hostname[len(PREFIX) :] if hostname.startswith(PREFIX) else hostname
        url = _explicit_fill(client, _with_query_password(db_engine.normalize_url(raw, WHAT)))
    else:
        url = _from_fields(client)
    with _lock:
        _DRIVERS[_key(url)] = url.drivername
    _write_fields(client, url)
    _adopt_alternates(client)
    return url


def as_uri(url: URL, include_password: bool = False, mask: str = "**") -> str:
    """``Connection.as_uri()``: the broker URL, query included, with the
    password (and secret query values) masked unless ``include_password``."""
    return PREFIX + urls.render(url, hide_password=not include_password, mask=mask)


def _with_query_password(url: URL) -> URL:
    # libpq reads ?password= as the password: make it Kombu's password field.
    password = url.query.get("password")
    if isinstance(password, str):
        query = {k: v for k, v in url.query.items() if k != "password"}
        url = url.set(password=url.password or password, query=query)
    # An empty password is no password (for libpq too).
    return url if url.password != "" else url._replace(password=None)


def _explicit_fill(client: Any, url: URL) -> URL:
    """Connection(url, userid=..., password=..., port=...) (Celery's
    broker_user, broker_password...): as in Kombu, the URL's own parts win."""
    password = client.password if isinstance(client.password, str) else None
    # _replace, not set(): set() ignores None.
    return url._replace(
        username=url.username or client.userid or None,
        password=url.password or password or None,
        port=url.port or client.port or None,
    )


def _from_fields(client: Any) -> URL:
    """The URL of a connection already in Kombu's fields: adopted before, or
    set by Kombu's failover (``switch``) or ``clone()``."""
    scheme = client.transport_cls if isinstance(client.transport_cls, str) else ""
    database, query = split_virtual_host(client.virtual_host)
    password = client.password if isinstance(client.password, str) else None
    url = URL.create(
        "x",
        username=client.userid or None,
        password=_resolve(password) if password else None,
        host=client.hostname or None,
        port=client.port or None,
        database=database,
        query={k: _resolve(v) if k.lower() in urls.SECRET_QUERY_KEYS and isinstance(v, str) else v for k, v in query.items()},
    )
    if scheme.startswith(PREFIX):
        drivername = scheme[len(PREFIX) :]
    elif _key(url) in _DRIVERS:
        # clone() of a connection whose transport did not exist yet: Kombu
        # read transport_cls ("jobtable") before the fields were adopted.
        drivername = _DRIVERS[_key(url)]
    else:
        raise ConfigurationError(
            "The jobtable transport needs a database URL: use a broker URL such as "
            "jobtable+postgresql+psycopg://user:password@host/dbname or jobtable+sqlite:////path/to/jobtable.sqlite3."
        )
    return _with_query_password(db_engine.normalize_url(url.set(drivername=drivername), WHAT))


def _reference(secret: str) -> str:
    if secret.startswith(_REFERENCE_PREFIX):
        return secret
    with _lock:
        reference = _REFERENCES.get(secret)
        if reference is None:
            reference = f"{_REFERENCE_PREFIX}{len(_SECRETS) + 1}"
            _SECRETS[reference] = secret
            _REFERENCES[secret] = reference
    return reference


def _resolve(value: str) -> str:
    if not value.startswith("jobtable-secret-"):
        return value
    secret = _SECRETS.get(value)
    if secret is None:
        raise ConfigurationError(
            f"{WHAT} holds {value!r}, a reference to a password that another process read from the "
            "original URL: give this process the original broker URL."
        )
    return secret


def split_virtual_host(virtual_host: str | None) -> tuple[str | None, urls.Query]:
    """(database, query) of a virtual_host written by ``virtual_host_of``."""
    database, _, query = (virtual_host or "").partition("?")
    database = unquote(database)
    return (database if database not in ("", NO_DATABASE) else None), urls.parse_query_text(query)


def virtual_host_of(url: URL) -> str:
    """``url``'s Kombu virtual_host: the database and the query, secret
    query values as references."""
    query = {k: _reference(v) if k.lower() in urls.SECRET_QUERY_KEYS and isinstance(v, str) else v for k, v in url.query.items()}
    text = urls.query_text(query)
    # Only "%" and "?" escaped: paths stay readable, "?" ends the database.
    database = (url.database or "").replace("%", "%25").replace("?", "%3F")
    return (database + (f"?{text}" if text else "")) or NO_DATABASE


def _write_fields(client: Any, url: URL) -> None:
    client.hostname = url.host or None
    client.port = url.port
    client.userid = url.username
    client.password = url.password
    client.virtual_host = virtual_host_of(url)
    # The whole scheme, as Kombu's failover sets it (registered aliases);
    # no uri_prefix, or info() would report "jobtable+<host>" as hostname.
    client.transport_cls = PREFIX + url.drivername
    client.uri_prefix = None


def _key(url: URL) -> tuple[Any, ...]:
    # Host names in lower case: Kombu's parser (urllib) lowers them.
    public = urls.secret_free(url)
    return (public.username, (public.host or "").lower(), public.port, public.database, urls.query_text(public.query))


def alternate_text(url: URL) -> str:
    """``url`` with its secrets as references, written so that Kombu's
    parser (``kombu.utils.url.parse_url``, used by ``Connection.switch``)
    reads back the fields ``_write_fields`` sets: the query goes into the
    path, percent-encoded, because Kombu would pass query keys to
    ``Connection._init_params`` as arguments."""
    netloc = quote(url.username, safe="") if url.username else ""
    if url.password:
        netloc += ":" + quote(_reference(url.password), safe="")
    netloc += "@" if netloc else ""
    host = url.host or ""
    netloc += f"[{host}]" if ":" in host else quote(host, safe="")
    if url.port:
        netloc += f":{url.port}"
    text = f"{PREFIX}{url.drivername}://{netloc}/{quote(virtual_host_of(url), safe='/')}"
    with _lock:
        _REWRITTEN.add(text)
    return text


def _alternate(alternate: Any) -> Any:
    if not isinstance(alternate, str) or not alternate.startswith(PREFIX) or "://" not in alternate:
        return alternate
    if alternate in _REWRITTEN:
        return alternate
    url = db_engine.normalize_url(alternate[len(PREFIX) :], f"{WHAT} (a failover alternate)")
    return alternate_text(_with_query_password(url))


def _adopt_alternates(client: Any) -> None:
    alternates = getattr(client, "alt", None)
    if not alternates or getattr(client, "_jobtable_alternates", None) is alternates:
        return
    # In place: the failover cycle iterates this list lazily.
    alternates[:] = [_alternate(a) for a in alternates]
    cycle = getattr(client, "cycle", None)
    if cycle is not None:
        # Entries the cycle took before (at least the first) come out raw:
        # rewrite what it yields, keeping its position.
        client.cycle = _rewritten(cycle)
    client._jobtable_alternates = alternates


def _rewritten(cycle: Iterator[Any]) -> Iterator[Any]:
    for alternate in cycle:
        yield _alternate(alternate)
