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
* Failover alternates (``url1;url2``) are rewritten without their secrets
  and in a form Kombu's ``switch()`` parses back into the same fields; their
  secrets stay in this process (``_SECRETS``) and come back when the
  transport of an alternate is created.  ``info()['alternates']`` is
  broadcast too.
* ``?password=`` becomes the password; ``?sslpassword=`` is kept in
  ``_KNOWN`` only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL

from ..db import engine as db_engine
from ..db import urls
from ..exceptions import ConfigurationError

PREFIX = "jobtable+"
WHAT = "The broker URL"
#: Kombu's virtual_host when the URL names no database.
NO_DATABASE = "/"

#: The URLs this process adopted, by the fields that identify them (``_key``):
#: their driver and secrets, for failover alternates (whose rewritten text
#: has no secrets) and clones.
_KNOWN: dict[tuple[Any, ...], tuple[str, str | None, dict[str, Any]]] = {}
_known_lock = threading.Lock()


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
    _remember(url)
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
    return url


def _explicit_fill(client: Any, url: URL) -> URL:
    """Connection(url, userid=..., password=..., port=...) (Celery's
    broker_user, broker_password...): as in Kombu, the URL's own parts win."""
    password = client.password if isinstance(client.password, str) else None
    return url.set(
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
    fields: dict[str, Any] = dict(
        username=client.userid or None,
        password=password or None,
        host=client.hostname or None,
        port=client.port or None,
        database=database,
        query=query,
    )
    known = _KNOWN.get(_key(URL.create("x", **fields)))
    if scheme.startswith(PREFIX):
        drivername = scheme[len(PREFIX) :]
    elif known is not None:
        # clone() of a connection whose transport did not exist yet: Kombu
        # read transport_cls ("jobtable") before the fields were adopted.
        drivername = known[0]
    else:
        raise ConfigurationError(
            "The jobtable transport needs a database URL: use a broker URL such as "
            "jobtable+postgresql+psycopg://user:password@host/dbname or jobtable+sqlite:////path/to/jobtable.sqlite3."
        )
    url = db_engine.normalize_url(URL.create(drivername, **fields), WHAT)
    if known is not None and known[0] == url.drivername:
        _, known_password, secret_query = known
        url = url.set(password=url.password or known_password, query={**secret_query, **url.query})
    return url


def split_virtual_host(virtual_host: str | None) -> tuple[str | None, urls.Query]:
    """(database, query) of a virtual_host written by ``_write_fields``."""
    database, _, query = (virtual_host or "").partition("?")
    return (database if database not in ("", NO_DATABASE) else None), urls.parse_query_text(query)


def virtual_host_of(url: URL) -> str:
    public = urls.secret_free(url)
    query = urls.query_text(public.query)
    return ((public.database or "") + (f"?{query}" if query else "")) or NO_DATABASE


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
    return (public.username, (public.host or "").lower(), public.port, virtual_host_of(public))


def _remember(url: URL) -> None:
    secret_query = {k: v for k, v in url.query.items() if k.lower() in urls.SECRET_QUERY_KEYS}
    with _known_lock:
        _KNOWN[_key(url)] = (url.drivername, url.password, secret_query)


def alternate_text(url: URL) -> str:
    """``url`` without secrets, written so that Kombu's parser
    (``kombu.utils.url.parse_url``, used by ``Connection.switch``) reads back
    the fields ``_write_fields`` sets: the query goes into the path,
    percent-encoded, because Kombu would pass query keys to
    ``Connection._init_params`` as arguments."""
    public = urls.secret_free(url)
    netloc = quote(public.username, safe="") + "@" if public.username else ""
    host = public.host or ""
    netloc += f"[{host}]" if ":" in host else quote(host, safe="")
    if public.port:
        netloc += f":{public.port}"
    return f"{PREFIX}{public.drivername}://{netloc}/{quote(virtual_host_of(public), safe='/')}"


def _alternate(alternate: Any) -> Any:
    if not isinstance(alternate, str) or not alternate.startswith(PREFIX) or "://" not in alternate:
        return alternate
    url = _with_query_password(db_engine.normalize_url(alternate[len(PREFIX) :], f"{WHAT} (a failover alternate)"))
    _remember(url)
    return alternate_text(url)


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
