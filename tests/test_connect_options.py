"""Connection options: a database address that accepts and never answers
stops a consumer or worker within the connect timeout, with an error that
names the setting; SSL options reach libpq or are refused (issue 14 item 7).

The silent server is real: a socket that accepts TCP connections and never
says a word (a firewall's black hole, a hung host)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import text
from sqlalchemy.engine import make_url

import jobtable
from jobtable.db import connect_options
from jobtable.db import engine as db_engine
from jobtable.exceptions import ConfigurationError, DatabaseUnavailable

ROOT = Path(__file__).resolve().parent.parent
#: Kombu's connect() tries twice, 2 s apart; the rest is slack for a loaded machine.
WITHIN = 30.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed at the end of the test
            held.append(client)  # accepted, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for client in held:
        client.close()


def _silent_url(port: int) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/jobtable"


def _fails(conn: Connection) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        conn.connect()
    return str(info.value), time.monotonic() - start


def test_kombu_connect_timeout_gives_up(silent_port: int) -> None:
    conn = Connection("jobtable+" + _silent_url(silent_port), connect_timeout=2)
    message, took = _fails(conn)
    assert took < WITHIN, took
    assert "no answer within the connect timeout of 2 s, set by broker_connection_timeout" in message, message
    assert "broker_url is right" in message, message


def test_transport_option_wins_over_connection_timeout(silent_port: int) -> None:
    conn = Connection("jobtable+" + _silent_url(silent_port), connect_timeout=600,
                      transport_options={"connect_timeout": 2})
    message, took = _fails(conn)
    assert took < WITHIN, took
    assert "of 2 s, set by broker_transport_options['connect_timeout']" in message, message


def test_url_timeout_wins(silent_port: int) -> None:
    conn = Connection("jobtable+" + _silent_url(silent_port) + "?connect_timeout=3", connect_timeout=600,
                      transport_options={"connect_timeout": 600})
    message, took = _fails(conn)
    assert took < WITHIN, took
    assert "of 3 s, set by connect_timeout in the broker URL's query" in message, message


def test_celery_worker_gives_up_naming_the_setting(silent_port: int) -> None:
    env = dict(os.environ, JT_BROKER_URL="jobtable+" + _silent_url(silent_port), JT_CONNECTION_TIMEOUT="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.connopts_celery_app", "worker", "-c", "1"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert done.returncode != 0, done.stderr
    # Two attempts of 2 s (broker_connection_max_retries=1), Celery's 2 s pause, start-up.
    assert took < WITHIN + 15, took
    assert "no answer within the connect timeout of 2 s, set by broker_connection_timeout" in done.stderr, done.stderr


def test_native_worker_gives_up_naming_the_setting(silent_port: int) -> None:
    env = dict(os.environ, JOBTABLE_DATABASE_URL=_silent_url(silent_port), JOBTABLE_CONNECT_TIMEOUT="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jobtable", "worker", "--burst"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert took < WITHIN, took
    assert "no answer within the connect timeout of 2 s, set by JOBTABLE_CONNECT_TIMEOUT" in output, output
    assert "JOBTABLE_DATABASE_URL is right" in output, output


def test_native_engine_gives_up_by_the_setting(silent_port: int) -> None:
    jobtable.configure(database_url=_silent_url(silent_port), connect_timeout=2)
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="of 2 s, set by JOBTABLE_CONNECT_TIMEOUT"):
        db_engine.ping(db_engine.get_engine())
    assert time.monotonic() - start < WITHIN


def _dsn(engine: object) -> str:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(text("SELECT 1")).scalar() == 1
        return str(conn.connection.driver_connection.info.dsn)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_valid_connections_still_work(dialect: str, db_url: str) -> None:
    # The native engine: the setting's timeout, the URL as given.
    db_engine.reset_engines()
    engine = db_engine.get_engine(db_url)
    assert "connect_timeout=10" in _dsn(engine)
    assert engine.url == make_url(db_url)
    # A broker connection first in its process: Celery's options, messages
    # flow, and the process's other users share its engine.
    db_engine.reset_engines()
    with Connection("jobtable+" + db_url, connect_timeout=3, transport_options={"connect_timeout": 4},
                    ssl=False) as conn:
        queue = conn.SimpleQueue("connopts_valid")
        queue.put({"n": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
        assert "connect_timeout=4" in _dsn(conn.transport.engine)
        assert db_engine.get_engine(db_url) is conn.transport.engine
        # The broadcast URL is the one configured.
        assert "connect_timeout" not in conn.as_uri()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_broker_use_ssl_reaches_libpq(dialect: str, db_url: str) -> None:
    # The test server has SSL off: sslmode=require must make the connection fail.
    conn = Connection("jobtable+" + db_url, ssl={"ssl_cert_reqs": ssl.CERT_NONE})
    message, _ = _fails(conn)
    assert "SSL" in message, message


def test_ssl_parameters() -> None:
    params = connect_options.ssl_parameters
    assert params(True) == {"sslmode": "verify-full", "sslrootcert": "system"}
    assert params(False) == {} and params(None) == {} and params({}) == {}
    assert params({"ssl_cert_reqs": ssl.CERT_NONE}) == {"sslmode": "require"}
    assert params({"ssl_cert_reqs": "optional", "ssl_ca_certs": "/ca.pem"}) == {"sslmode": "verify-ca", "sslrootcert": "/ca.pem"}
    assert params({"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": Path("/ca.pem"), "ssl_certfile": "/c.pem",
                   "ssl_keyfile": "/k.pem"}) == {"sslmode": "verify-full", "sslrootcert": "/ca.pem",
                                                 "sslcert": "/c.pem", "sslkey": "/k.pem"}
    # py-amqp's spelling, and the host name check off.
    assert params({"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": "/ca.pem", "check_hostname": False}) == {
        "sslmode": "verify-ca", "sslrootcert": "/ca.pem"}
    assert params({"sslmode": "require"}) == {"sslmode": "require"}


@pytest.mark.parametrize("value, problem", [
    ({"ssl_ciphers": "HIGH"}, "'ssl_ciphers', which jobtable cannot apply"),
    ({"ssl_cert_reqs": "sometimes"}, "use ssl.CERT_NONE"),
    ({"sslmode": "verify-full", "ssl_cert_reqs": ssl.CERT_NONE}, "give one of them"),
    ({"sslmode": "strict"}, "use one of disable"),
    ("yes", "must be True, False or a dict"),
    ({"ssl_ca_certs": 5}, "must be a string"),
])
def test_ssl_parameters_refused(value: object, problem: str) -> None:
    with pytest.raises(ConfigurationError, match="broker_use_ssl") as info:
        connect_options.ssl_parameters(value)
    assert problem in str(info.value)


def test_ssl_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    sqlite = Connection(f"jobtable+sqlite:///{tmp_path / 'q.sqlite3'}", ssl=True)
    with pytest.raises(ConfigurationError, match="SQLite file: there is no network connection"):
        sqlite.connect()
    conflicting = Connection("jobtable+postgresql+psycopg://postgres@127.0.0.1/x?sslmode=disable", ssl=True)
    with pytest.raises(ConfigurationError, match="the URL's query says sslmode='disable'"):
        conflicting.connect()


def test_connect_timeout_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"connect_timeout.*at least 2"):
        jobtable.configure(connect_timeout=0)
    os.environ["JOBTABLE_CONNECT_TIMEOUT"] = "soon"
    from jobtable import settings

    settings.reset()
    with pytest.raises(ConfigurationError, match="JOBTABLE_CONNECT_TIMEOUT=.*not a whole number"):
        settings.get_settings()
    del os.environ["JOBTABLE_CONNECT_TIMEOUT"]
    settings.reset()
    assert settings.get_settings().connect_timeout == 10
    with pytest.raises(ConfigurationError, match=r"broker_transport_options\['connect_timeout'\]"):
        Connection("jobtable+postgresql+psycopg://postgres@127.0.0.1/x", transport_options={"connect_timeout": -1}).connect()
