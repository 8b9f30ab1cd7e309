"""Broker URLs in Kombu's own fields: no password in ``hostname``,
``info()`` or ``as_uri()``; ports, queries, failover and clones as on
RabbitMQ; hostile URLs refused without echoing the password."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from kombu.utils.url import parse_url
from sqlalchemy.engine import URL, make_url

from jobtable.db import engine as db_engine
from jobtable import dburls as urls
from jobtable.exceptions import ConfigurationError, DatabaseUnavailable
from jobtable.transport import brokerurl

from .transport_helpers import FAST_OPTIONS

SECRET = "s3cret-Qv7"


def with_password(db_url: str, password: str = SECRET) -> str:
    return make_url(db_url).set(password=password).render_as_string(hide_password=False)


def fields(url: URL) -> tuple[Any, ...]:
    return (url.drivername, url.username, url.password, url.host, url.port, url.database, dict(url.query))


# -- Kombu's fields ---------------------------------------------------------------------


def test_postgresql_url_becomes_kombu_fields(pg_url: str) -> None:
    db_url = with_password(pg_url) + "?application_name=jt-fields&sslmode=disable"
    conn = Connection("jobtable+" + db_url, transport_options=FAST_OPTIONS)
    parsed = make_url(pg_url)
    info = conn.info()
    assert (info["hostname"], info["port"], info["userid"], info["password"]) == (
        parsed.host, parsed.port, parsed.username, SECRET,
    )
    assert info["virtual_host"] == f"{parsed.database}?application_name=jt-fields&sslmode=disable"
    assert info["uri_prefix"] is None and conn.transport_cls == "jobtable+postgresql+psycopg"
    assert (conn.hostname, conn.port, conn.host) == (parsed.host, parsed.port, f"{parsed.host}:{parsed.port}")
    # Everything Celery broadcasts (it drops "password" itself) is clean.
    shown = {k: v for k, v in info.items() if k != "password"}
    assert SECRET not in repr(shown) and SECRET not in repr(conn) and SECRET not in conn.as_uri()
    masked = conn.as_uri()
    assert masked == f"jobtable+postgresql+psycopg://{parsed.username}:**@{parsed.host}:{parsed.port}/{parsed.database}?application_name=jt-fields&sslmode=disable"
    assert conn.as_uri(mask="XX").count(":XX@") == 1
    assert conn.as_uri(include_password=True) == "jobtable+" + db_url
    # The transport works from the rebuilt URL, query included.
    assert conn.transport.db_url == db_url
    with conn:
        conn.connect()
        queue = conn.SimpleQueue("fields")
        queue.put({"x": 1})
        assert queue.get(timeout=5).payload == {"x": 1}
        queue.close()
        with db_engine.get_engine(db_url).connect() as sql:
            assert sql.exec_driver_sql("SHOW application_name").scalar() == "jt-fields"
        for channel in conn.transport.channels:
            assert SECRET not in repr(channel)
    assert SECRET not in repr(conn.transport)


@pytest.mark.parametrize(
    ("broker", "database"),
    [("jobtable+sqlite:///relative/jt.sqlite3", "relative/jt.sqlite3"), ("jobtable+sqlite:////abs/jt.sqlite3", "/abs/jt.sqlite3")],
)
def test_sqlite_urls_become_kombu_fields(broker: str, database: str) -> None:
    conn = Connection(broker)
    info = conn.info()
    assert (info["hostname"], info["port"], info["userid"], info["virtual_host"]) == (None, None, None, database)
    assert conn.as_uri() == broker == conn.as_uri(include_password=True)
    assert conn.transport.db_url == broker[len("jobtable+") :]
    assert conn.clone().transport.db_url == broker[len("jobtable+") :]


def test_sqlite_url_works_and_clones(db_url: str, dialect: str) -> None:
    conn = Connection("jobtable+" + db_url, transport_options=FAST_OPTIONS)
    for each in (conn, conn.clone()):
        with each:
            each.connect()
            queue = each.SimpleQueue(f"clone-{dialect}")
            queue.put({"via": id(each)})
            message = queue.get(timeout=5)
            message.ack()
            assert message.payload == {"via": id(each)}
            queue.close()


@pytest.mark.parametrize("broker", ["jobtable+sqlite://", "jobtable+sqlite:///:memory:"])
def test_sqlite_memory_is_refused(broker: str) -> None:
    with pytest.raises(ConfigurationError, match="not an in-memory database"):
        Connection(broker).transport


def test_explicit_connection_arguments_fill_the_gaps(pg_url: str) -> None:
    # Celery's broker_user/broker_password: the URL's own parts win, as in Kombu.
    parsed = make_url(pg_url)
    conn = Connection("jobtable+" + pg_url, password=SECRET)
    assert conn.transport.url.password == SECRET and SECRET not in conn.as_uri()
    conn = Connection("jobtable+" + with_password(pg_url, "from-url"), password=SECRET, userid="other")
    assert (conn.transport.url.password, conn.transport.url.username) == ("from-url", parsed.username)


def test_password_in_the_query_becomes_the_password(pg_url: str) -> None:
    conn = Connection(f"jobtable+{pg_url}?password={SECRET}&sslpassword=key-{SECRET}")
    conn.transport  # the fields are set when the transport is created
    assert conn.password == SECRET
    assert SECRET not in conn.virtual_host and "sslpassword=jobtable-secret-" in conn.virtual_host
    assert SECRET not in conn.as_uri() and "sslpassword=**" in conn.as_uri()
    assert dict(conn.transport.url.query) == {"sslpassword": f"key-{SECRET}"}
    # A clone has no sslpassword field: it comes back from this process.
    assert dict(conn.clone().transport.url.query) == {"sslpassword": f"key-{SECRET}"}


def test_clone_before_the_transport_exists(pg_url: str) -> None:
    # Kombu reads transport_cls ("jobtable") before it creates the transport.
    conn = Connection("jobtable+" + with_password(pg_url))
    clone = conn.clone()
    assert clone.transport.db_url == with_password(pg_url)


# -- failover ---------------------------------------------------------------------------


def test_failover_to_the_next_url(pg_url: str) -> None:
    live = with_password(pg_url) + "?application_name=jt-failover"
    dead = make_url(live).set(port=1).render_as_string(hide_password=False)
    conn = Connection(f"jobtable+{dead};jobtable+{live}", transport_options=FAST_OPTIONS, connect_timeout=2)
    assert conn.info()["port"] == 1
    errors: list[BaseException] = []
    conn.ensure_connection(errback=lambda exc, interval: errors.append(exc), max_retries=3, interval_start=0, interval_step=0)
    try:
        assert conn.port == make_url(pg_url).port and conn.hostname == make_url(pg_url).host
        assert conn.transport.db_url == live
        assert errors and all(SECRET not in str(e) for e in errors), errors
        assert isinstance(errors[0], DatabaseUnavailable)
        queue = conn.SimpleQueue("failover-next")
        queue.put({"after": "failover"})
        assert queue.get(timeout=5).payload == {"after": "failover"}
        queue.close()
        # The alternates Kombu (and Celery) show carry no secret.
        assert conn.alt and all(SECRET not in alt for alt in conn.info()["alternates"])
    finally:
        conn.release()


def test_failover_keeps_the_query_and_the_password(pg_url: str) -> None:
    # Kombu's switch() hands a URL's query keys to Connection._init_params
    # as arguments: the alternates are rewritten with the query in the path.
    first = with_password(pg_url) + "?application_name=one"
    second = make_url(with_password(pg_url, "other-" + SECRET)).set(port=1, query={"sslmode": "disable"})
    conn = Connection(f"jobtable+{first};jobtable+{second.render_as_string(hide_password=False)}")
    assert conn.transport.db_url == first
    conn.maybe_switch_next()
    assert (conn.port, conn.virtual_host) == (1, f"{second.database}?sslmode=disable")
    assert fields(conn.transport.url) == fields(second)
    conn.maybe_switch_next()
    assert conn.transport.db_url == first
    conn.maybe_switch_next()
    assert fields(conn.transport.url) == fields(second)


def test_failover_switch_to_sqlite_path(tmp_path: Path) -> None:
    one, two = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    conn = Connection(f"jobtable+{one};jobtable+{two}")
    assert conn.transport.db_url == one
    conn.maybe_switch_next()
    assert conn.transport.db_url == two and conn.virtual_host == f"{tmp_path}/two.db"


# -- hostile URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "message"),
    [
        (f"postgres:p@{SECRET}", "unescaped '@'"),
        (f"postgres:{SECRET}@x", "unescaped '@'"),
        (f"postgres:p@ss:{SECRET}", "unescaped '@'"),
        (f"postgres:{SECRET}/x", "ambiguous"),
        (f"postgres:{SECRET}?x", "ambiguous"),
        (f"postgres:{SECRET}#x", "ambiguous"),
    ],
)
@pytest.mark.parametrize("prefix", ["jobtable+", ""])
def test_ambiguous_password_is_refused_without_echo(userinfo: str, message: str, prefix: str) -> None:
    raw = f"{prefix}postgresql+psycopg://{userinfo}@127.0.0.1:5432/db"
    with pytest.raises(ConfigurationError, match=message) as info:
        if prefix:
            Connection(raw).transport
        else:
            db_engine.normalize_url(raw)
    text = str(info.value)
    assert SECRET not in text and "percent-encode" in text
    assert ("broker URL" if prefix else "JOBTABLE_DATABASE_URL") in text


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://postgres:{SECRET}/127.0.0.1/db",  # "@" forgotten: the password is the port
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432:5433/db",
        f"postgresql://postgres:{SECRET}@127.0.0.1:0/db",
        f"postgresql://postgres:{SECRET}@127.0.0.1:65536/db",
        f"postgresql://postgres:{SECRET}\x00@127.0.0.1/db",
        f"postgresql://postgres:{SECRET}\udcff@127.0.0.1/db",
        f"postgres:{SECRET}@127.0.0.1/db",
        f"mssql://postgres:{SECRET}@127.0.0.1/db?password={SECRET}",
        f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1/db",
    ],
)
def test_malformed_url_errors_do_not_echo_the_password(raw: str) -> None:
    attempts = [lambda: db_engine.normalize_url(raw)]
    if "://" in raw:  # else Kombu reads a host name, for its default transport
        attempts.append(lambda: Connection("jobtable+" + raw).transport)
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as info:
            attempt()
        assert SECRET not in str(info.value), info.value
        assert "URL" in str(info.value)


def test_colon_in_the_password_is_read_as_everyone_reads_it() -> None:
    # RFC 3986 allows ":" in a password; SQLAlchemy, urllib and libpq agree.
    conn = Connection(f"jobtable+postgresql+psycopg://postgres:pa:ss:{SECRET}@127.0.0.1/db")
    conn.transport
    assert (conn.userid, conn.password, conn.hostname) == ("postgres", f"pa:ss:{SECRET}", "127.0.0.1")
    assert SECRET not in conn.as_uri()


@pytest.mark.parametrize(
    ("userinfo", "password"),
    [
        (f"postgres:p%40ss%3A{SECRET}", f"p@ss:{SECRET}"),  # percent-encoded "@" and ":"
        ("postgres:", None),  # empty password: none
        ("postgres", None),
        (f"postgres:{quote('pässwörd-' + SECRET, safe='')}", f"pässwörd-{SECRET}"),
        (f"postgres:{quote('🔑 ' + SECRET + ' +%', safe='')}", f"🔑 {SECRET} +%"),
    ],
)
def test_encoded_and_empty_passwords(userinfo: str, password: str | None) -> None:
    conn = Connection(f"jobtable+postgresql+psycopg://{userinfo}@[::1]:6543/db")
    conn.transport
    assert (conn.password, conn.hostname, conn.port) == (password, "::1", 6543)
    assert conn.transport.url.password == password
    assert conn.as_uri().startswith("jobtable+postgresql+psycopg://postgres") and "[::1]:6543/db" in conn.as_uri()
    if password:
        assert SECRET not in conn.as_uri()
        assert Connection(conn.as_uri(include_password=True)).transport.url.password == password


def test_unreachable_database_error_does_not_echo_the_password(pg_url: str) -> None:
    dead = make_url(with_password(pg_url)).set(port=1).render_as_string(hide_password=False)
    conn = Connection("jobtable+" + dead, connect_timeout=1)
    with pytest.raises(DatabaseUnavailable) as info:
        conn.connect()
    assert SECRET not in str(info.value) and ":***@" in str(info.value)
    with pytest.raises(DatabaseUnavailable) as info:
        db_engine.connect(db_engine.get_engine(dead + f"?sslpassword={SECRET}"), check=True)
    assert SECRET not in str(info.value)


def test_describe_masks_query_secrets() -> None:
    url = make_url(f"postgresql+psycopg://u:{SECRET}@h/db?password={SECRET}&sslpassword={SECRET}&sslmode=require")
    shown = urls.render(url)
    assert SECRET not in shown and "sslmode=require" in shown
    assert urls.render(url, mask="**") == "postgresql+psycopg://u:**@h/db?password=**&sslmode=require&sslpassword=**"


# -- property: parse and rebuild --------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5})?", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a))),
)
_query = st.dictionaries(st.sampled_from(["sslmode", "application_name", "connect_timeout", "options"]), _text, max_size=3)


@st.composite
def database_urls(draw: Any) -> URL:
    username = draw(st.none() | _text.filter(bool))
    return URL.create(
        "postgresql+psycopg",
        username=username,
        # A URL has no password without a user name.
        password=draw(st.none() | _text.filter(bool)) if username else None,
        host=draw(_hosts),
        port=draw(st.none() | st.integers(1, 65535)),
        database=draw(st.none() | _text.filter(lambda d: d not in ("", "/"))),
        query=draw(_query),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(database_urls())
def test_round_trip_through_kombu_fields(url: URL) -> None:
    text = "jobtable+" + url.render_as_string(hide_password=False)
    url = make_url(text[len("jobtable+") :])  # as SQLAlchemy reads it (it drops "?sslmode=")
    conn = Connection(text)
    conn.transport
    assert fields(conn.transport.url) == fields(url)
    assert (conn.hostname, conn.port, conn.userid, conn.password) == (url.host, url.port, url.username, url.password)
    # as_uri: unmasked it gives the same URL back, masked it has no password.
    assert fields(Connection(conn.as_uri(include_password=True)).transport.url) == fields(url)
    masked = make_url(conn.as_uri()[len("jobtable+") :])
    assert fields(masked) == fields(url.set(password="**" if url.password else None))
    # clone() and Kombu's failover parser (switch) rebuild the same URL.
    assert fields(conn.clone().transport.url) == fields(url)
    alternate = brokerurl.alternate_text(url)
    # ...with a reference instead of the password.
    assert (make_url(alternate[len("jobtable+") :]).password or "jobtable-secret-").startswith("jobtable-secret-")
    parsed = parse_url(alternate)
    assert set(parsed) == {"transport", "hostname", "port", "userid", "password", "virtual_host"}
    other = Connection("jobtable+sqlite:////tmp/jt-other.sqlite3")
    other.transport
    other.switch(alternate)
    assert fields(other.transport.url) == fields(url)


@settings(max_examples=100, deadline=None)
@given(user=_text.filter(lambda u: bool(u) and "@" not in u), before=_text, after=_text)
def test_unescaped_at_sign_is_refused_without_echo(user: str, before: str, after: str) -> None:
    password = f"Zq9{quote(before, safe='')}@{quote(after, safe='')}"
    raw = f"jobtable+postgresql+psycopg://{quote(user, safe='')}:{password}@db.example/jobs"
    with pytest.raises(ConfigurationError) as info:
        Connection(raw).transport
    assert password not in str(info.value) and password.split("@")[0] not in str(info.value)


@settings(max_examples=100, deadline=None)
# Names without surrounding whitespace: URLs from the environment and
# pyproject are stripped (normalize_url), so "/tmp/ " is read as "/tmp/".
@given(
    name=_text.filter(lambda n: bool(n) and n == n.strip()),
    absolute=st.booleans(),
    query=st.dictionaries(st.sampled_from(["timeout", "uri"]), _text.filter(bool), max_size=1),
)
def test_sqlite_paths_round_trip(name: str, absolute: bool, query: dict[str, str]) -> None:
    url = make_url(URL.create("sqlite", database=("/tmp/" if absolute else "") + name, query=query).render_as_string())
    conn = Connection("jobtable+" + url.render_as_string())
    conn.transport
    assert fields(conn.transport.url) == fields(url) == fields(conn.clone().transport.url)
    other = Connection("jobtable+sqlite:////tmp/jt-other.sqlite3")
    other.transport
    other.switch(brokerurl.alternate_text(url))
    assert fields(other.transport.url) == fields(url)
