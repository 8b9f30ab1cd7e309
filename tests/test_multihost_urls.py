"""libpq multi-host URLs (failover, issue 18) and the PgBouncer settings:
parsed the same by jobtable, SQLAlchemy and Kombu, every host kept through
Kombu's fields and clones, the password never shown; hostile values of the
new settings refused naming the setting, without the password."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from hypothesis import strategies as st
from kombu import Connection

import jobtable
from jobtable import dburls as urls
from jobtable import settings
from jobtable.db import engine as db_engine
from jobtable.exceptions import ConfigurationError
from jobtable.transport import brokerurl

SECRET = "s3cret-Mh4"
HOSTS = "host=db-a.internal:5433&host=db-b.internal:5434&target_session_attrs=read-write"
MULTI = f"postgresql+psycopg://jobs:{SECRET}@/queue?{HOSTS}"
PROPERTY = hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _libpq_params(url: str) -> dict[str, Any]:
    """What psycopg would be given (no connection is made)."""
    engine = db_engine.create_jobtable_engine(url)
    try:
        _args, params = engine.dialect.create_connect_args(engine.url)
        return {k: v for k, v in params.items() if k != "context"}  # psycopg's adapters: an object per engine
    finally:
        engine.dispose()


def test_both_hosts_reach_libpq_in_order() -> None:
    params = _libpq_params(MULTI)
    assert params["host"] == "db-a.internal,db-b.internal"
    assert params["port"] == "5433,5434"
    assert params["target_session_attrs"] == "read-write"
    assert params["password"] == SECRET and params["dbname"] == "queue"
    # The comma form libpq documents is accepted as well.
    params = _libpq_params("postgresql://jobs@/queue?host=db-a,db-b&port=5433,5434&target_session_attrs=primary")
    assert (params["host"], params["port"]) == ("db-a,db-b", "5433,5434")


def test_multi_host_url_is_shown_without_its_password() -> None:
    parsed = urls.normalize_url(MULTI)
    shown = urls.render(parsed)
    assert SECRET not in shown
    assert "db-a.internal" in shown and "db-b.internal" in shown and "target_session_attrs=read-write" in shown
    assert SECRET not in urls.redact(MULTI)
    assert "db-b.internal" in urls.redact(MULTI)
    engine = db_engine.create_jobtable_engine(MULTI)
    try:
        assert SECRET not in db_engine.describe(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("query", [
    "host=a:5432&host=b:x54",  # a port that is not a number
    "host=a:5432&host=b:5433&port=5432",  # both forms at once
    "host=a,b,c&port=5432,5433",  # three hosts, two ports
    "host=a:5432&host=b:70000",  # out of range
    "host=a:5432&host=:5433",  # no host
])
def test_unreadable_hosts_fail_at_once_naming_the_setting(query: str, clean_settings: None) -> None:
    bad = f"postgresql+psycopg://jobs:{SECRET}@/queue?{query}"
    with pytest.raises(ConfigurationError, match="JOBTABLE_DATABASE_URL") as info:
        jobtable.configure(database_url=bad)
    assert SECRET not in str(info.value)
    assert "host=db-a:5432&host=db-b:5432" in str(info.value)  # the fix
    with pytest.raises(ConfigurationError, match="broker URL") as info:
        Connection("jobtable+" + bad).transport
    assert SECRET not in str(info.value)


def test_kombu_connection_keeps_every_host_and_hides_the_password() -> None:
    conn = Connection("jobtable+" + MULTI)
    info = conn.info()
    assert info["hostname"] is None  # no single host: they are in the query
    assert "target_session_attrs=read-write" in info["virtual_host"]
    assert SECRET not in repr({k: v for k, v in info.items() if k != "password"})
    assert SECRET not in conn.as_uri() and "db-b.internal" in conn.as_uri()
    # The transport's URL, and a clone's (Celery clones per pool), give
    # libpq the same hosts as the original.
    expected = _libpq_params(MULTI)
    assert _libpq_params(conn.transport.db_url) == expected
    clone = conn.clone()
    assert _libpq_params(brokerurl.adopt(clone).render_as_string(hide_password=False)) == expected
    conn.release()
    clone.release()


host_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9]{1,6}){0,2}", fullmatch=True)
passwords = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)


@PROPERTY
@given(hosts=st.lists(st.tuples(host_names, st.integers(1, 65535)), min_size=2, max_size=4), password=passwords)
def test_any_multi_host_url_round_trips_through_kombu(hosts: list[tuple[str, int]], password: str) -> None:
    query = "&".join(f"host={h}:{p}" for h, p in hosts) + "&target_session_attrs=read-write"
    raw = f"postgresql+psycopg://u:{quote(password, safe='')}@/db?{query}"
    expected = _libpq_params(raw)
    assert expected["host"] == ",".join(h for h, _ in hosts)
    conn = Connection("jobtable+" + raw)
    try:
        assert _libpq_params(conn.transport.db_url) == expected
        shown = {k: v for k, v in conn.info().items() if k != "password"}
        if len(password) >= 4:  # a short password may be part of any text
            assert password not in repr(shown) and password not in conn.as_uri()
            assert quote(password, safe="") not in conn.as_uri()
    finally:
        conn.release()


# -- database_pooler and database_direct_url -------------------------------------------------


@pytest.fixture
def clean_settings() -> Any:
    settings.reset()
    yield
    settings.reset()
    db_engine.reset_engines()


@pytest.mark.parametrize("value", ["session", "pgbouncer", "1", "", " transaction x"])
def test_pooler_must_be_a_known_mode(clean_settings: None, value: str) -> None:
    with pytest.raises(ConfigurationError, match="database_pooler") as info:
        jobtable.configure(database_pooler=value)
    assert "'none'" in str(info.value) and "'transaction'" in str(info.value)


@pytest.mark.parametrize("value", [
    "sqlite:///x.sqlite3",
    f"mysql://root:{SECRET}@localhost/db",
    f"postgresql+asyncpg://u:{SECRET}@h/db",
    f"postgresql://u:{SECRET}@h:99999/db",
    "not a url",
    f"postgresql://u:{SECRET}@h/db\x00",
])
def test_direct_url_must_be_postgresql_and_is_never_echoed(
    clean_settings: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    with pytest.raises(ConfigurationError, match="database_direct_url") as info:
        jobtable.configure(database_direct_url=value)
    assert SECRET not in str(info.value)
    if "\x00" in value:
        return  # an environment cannot hold it
    monkeypatch.setenv("JOBTABLE_DATABASE_DIRECT_URL", value)
    with pytest.raises(ConfigurationError, match="JOBTABLE_DATABASE_DIRECT_URL") as info:
        settings.get_settings()
    assert SECRET not in str(info.value)


def test_direct_url_is_masked_in_the_start_up_line(clean_settings: None) -> None:
    jobtable.configure(database_pooler="transaction", database_direct_url=f"postgresql://u:{SECRET}@db/q")
    assert settings.get_settings().database_direct_url.endswith("@db/q")
    line = settings.describe_sources()
    assert "database_direct_url=" in line and SECRET not in line


def _prepare_threshold(engine: Any) -> Any:
    raw = engine.raw_connection()
    try:
        return raw.driver_connection.prepare_threshold
    finally:
        raw.close()


def test_pooled_engine_prepares_nothing_and_sessions_go_direct(clean_settings: None, pg_url: str) -> None:
    """Connections to the pooled URL never prepare a statement (PgBouncer
    < 1.21 would run it on a server connection that does not have it);
    LISTEN and lock sessions use the direct URL, which does."""
    direct = pg_url + "?application_name=jobtable-direct"
    jobtable.configure(database_url=pg_url, database_pooler="transaction", database_direct_url=direct)
    engine = db_engine.get_engine()
    assert _prepare_threshold(engine) is None
    session = db_engine.session_engine(engine)
    assert session is not None and session.url.query["application_name"] == "jobtable-direct"
    assert _prepare_threshold(session) == 5  # psycopg's default
    # Another URL (a broker elsewhere) is not the pooled one.
    other = db_engine.get_engine(direct)
    assert db_engine.session_engine(other) is other
    # Without a direct URL: no session at all (poll; deaths by heartbeats).
    jobtable.configure(database_direct_url="")
    assert db_engine.session_engine(db_engine.get_engine()) is None
    jobtable.configure(database_pooler="none")
    engine = db_engine.get_engine()
    assert db_engine.session_engine(engine) is engine and _prepare_threshold(engine) == 5


def test_direct_url_equal_to_the_pooled_one_is_refused(clean_settings: None) -> None:
    url = f"postgresql://u:{SECRET}@bouncer:6432/q"
    jobtable.configure(database_url=url, database_pooler="transaction", database_direct_url=url)
    with pytest.raises(ConfigurationError, match="JOBTABLE_DATABASE_DIRECT_URL is the same URL") as info:
        db_engine.session_engine(db_engine.get_engine())
    assert SECRET not in str(info.value)
