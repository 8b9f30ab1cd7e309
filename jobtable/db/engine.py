"""One SQLAlchemy engine per process and database URL.

Engines are never shared across ``fork()``: a forked child (Celery prefork,
the native worker's pool) gets a fresh engine on first use, and the parent's
pooled connections are left alone.  A child that is the parent's own
helper (a native pool member) may ``adopt_parent_engines()`` instead: the
parent's engines, their pools emptied, and its schema checks -- no new
dialect set-up, no second schema check per member.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError

from .. import settings
from ..exceptions import ConfigurationError, DatabaseUnavailable, SchemaNotMigrated
from .. import dburls as urls
from . import clock, connect_options
from .dialects import mysql_session

URL_EXAMPLES = urls.URL_EXAMPLES
# Parsing lives in dburls.py (below settings); kept here for callers.
normalize_url = urls.normalize_url

#: Drivers that pass libpq parameters through (tcp_user_timeout).
LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2"})
#: Seconds: a shorter TCP user timeout would end connections over a slow link.
MIN_TCP_USER_TIMEOUT = 5.0

_lock = threading.Lock()
_engines: dict[tuple[int, str, tuple[tuple[str, str], ...]], Engine] = {}
_checked: set[tuple[int, str]] = set()
#: In a forked child: the parent's engines (pools emptied, connections left
#: to the parent) and the URLs whose schema it had checked, until adopted.
_inherited: dict[tuple[str, tuple[tuple[str, str], ...]], Engine] = {}
_inherited_checked: set[str] = set()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: no deadlock-prone lock
        # upgrades, and it is the lock that makes should_enqueue() atomic.
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_jobtable_engine(url: str | URL, connect: connect_options.Connect | None = None) -> Engine:
    """A new engine for ``url``; ``connect``: libpq parameters from outside
    the URL (a broker's connect timeout and SSL options)."""
    parsed = normalize_url(url)
    connect = connect or connect_options.Connect()
    try:
        if parsed.get_backend_name() == "sqlite":
            directory = os.path.dirname(os.path.abspath(parsed.database or ""))
            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"The directory of the SQLite database {parsed.database!r} does not exist: create {directory!r} first."
                )
            engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
            _configure_sqlite(engine)
        elif parsed.get_backend_name() == "mysql":
            engine = _create_mysql_engine(parsed)
        else:
            # As arguments, not in the URL: engine.url stays the URL given
            # (logs, messages, keys).  The URL's own connect_timeout wins.
            connect_args: dict[str, Any] = dict(connect.params)
            timeout_setting = connect.timeout_setting
            own = connect_options.url_timeout(parsed)
            if own is not None:
                connect_args.pop("connect_timeout", None)
                timeout: float | None = own
                timeout_setting = connect.timeout_setting or "connect_timeout in the URL's query"
            elif "connect_timeout" in connect_args:
                timeout = float(connect_args["connect_timeout"])
            elif parsed.get_backend_name() in connect_options.TIMEOUT_BACKENDS:
                timeout = settings.get_settings().connect_timeout
                connect_args["connect_timeout"] = connect_options.timeout_parameter(timeout)
                timeout_setting = "JOBTABLE_CONNECT_TIMEOUT"
            else:
                timeout = None
            if timeout is not None and "tcp_user_timeout" not in parsed.query and parsed.get_driver_name() in LIBPQ_DRIVERS:
                # A statement sent into a network partition would otherwise
                # wait for TCP to give up (~15 min): a worker's supervisor
                # blocked that long heartbeats, reaps and rescues nothing.
                # Unacknowledged data for the connect timeout ends the
                # connection instead; a slow query is not affected (the
                # server acknowledges what it was sent).
                connect_args.setdefault("tcp_user_timeout", str(int(max(timeout, MIN_TCP_USER_TIMEOUT) * 1000)))
            pooled = _behind_pooler(parsed)
            if pooled:
                # A statement prepared on one server connection would be
                # run on another by the pooler's next transaction.
                connect_args["prepare_threshold"] = None
            engine = create_engine(
                parsed, pool_size=10, max_overflow=20, pool_recycle=3600, connect_args=connect_args
            )
            if pooled:
                _pooled.add(engine)
            if timeout is not None:
                _timeouts[engine] = (timeout, timeout_setting)
    except NoSuchModuleError as exc:
        raise ConfigurationError(f"No SQLAlchemy driver for {parsed.drivername!r}: {exc}.") from None
    if engine.dialect.name in ("postgresql", "mysql"):
        # Every stored time is the database's (db/clock.py): measure this
        # process's offset from it now and then, on a connection anyway in hand.
        event.listen(engine, "checkout", functools.partial(clock.on_checkout, dialect=engine.dialect.name))
        # After a failover the server, and its clock, may be another one.
        event.listen(engine, "connect", clock.on_connect)
        event.listen(engine, "handle_error", clock.on_error)
    _url_settings[engine] = connect.url_setting
    return engine


def _create_mysql_engine(parsed: URL) -> Engine:
    """MySQL/MariaDB: every session in UTC (the stats triggers and the
    wake-up check compute with the server's clock, and DATETIME columns
    hold naive UTC); READ COMMITTED, so a claim or a poll sees what others
    committed since its transaction began, with no gap locks between
    claimers; utf8mb4 unless the URL says otherwise.  The pool's rollback at
    check-in is mysql_session's, which a connection that only ran
    autocommit statements (a single enqueue) does not need."""
    if "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    try:
        engine = create_engine(
            parsed,
            pool_size=10,
            max_overflow=20,
            pool_recycle=3600,
            pool_reset_on_return=None,
            isolation_level="READ COMMITTED",
            connect_args={"init_command": "SET time_zone = '+00:00'"},
        )
    except ImportError as exc:
        raise ConfigurationError(
            f"The database URL {urls.render(parsed)!r} needs a MySQL driver that is not installed ({exc}): "
            "pip install 'jobtable[mysql]'."
        ) from None
    mysql_session.install_session_events(engine)
    return engine


#: The direct URL's errors name its setting.
_DIRECT = connect_options.Connect(url_setting="JOBTABLE_DATABASE_DIRECT_URL")
#: Engines whose connections go through a transaction pooler.
_pooled: weakref.WeakSet[Engine] = weakref.WeakSet()


def is_pooled(engine: Engine) -> bool:
    """Whether ``engine``'s connections go through a transaction pooler."""
    return engine in _pooled


def _behind_pooler(parsed: URL) -> bool:
    """Whether ``parsed`` is the configured database URL and that is said
    to reach a pooler in transaction mode (``database_pooler``)."""
    current = settings.get_settings()
    if current.database_pooler != "transaction" or parsed.get_backend_name() != "postgresql":
        return False
    return parsed == normalize_url(current.database_url)


def has_session(url: URL) -> bool:
    """Whether connections for ``url`` can hold a session (LISTEN, locks):
    not behind a transaction pooler, or with a direct URL beside it."""
    return not _behind_pooler(url) or bool(settings.get_settings().database_direct_url)


def session_engine(engine: Engine) -> Engine | None:
    """The engine for connections that need a server session of their own
    (LISTEN, session advisory locks): ``engine`` itself, unless its
    connections go through a transaction pooler -- then the engine of
    ``database_direct_url``, or None when there is none (poll instead)."""
    if engine not in _pooled:
        return engine
    direct = settings.get_settings().database_direct_url
    if not direct:
        return None
    if normalize_url(direct) == engine.url:
        raise ConfigurationError(
            "JOBTABLE_DATABASE_DIRECT_URL is the same URL as JOBTABLE_DATABASE_URL, which database_pooler says "
            "reaches a pooler in transaction mode: set it to the URL of the PostgreSQL server itself "
            "(its host and port, not the pooler's), or leave it empty to poll."
        )
    return get_engine(direct, _DIRECT)


def reset_engines() -> None:
    """Drop this process's engines (after ``configure()`` or a fork)."""
    with _lock:
        for (pid, _url, _connect), engine in list(_engines.items()):
            # A forked child must not close its parent's sockets.
            engine.dispose(close=pid == os.getpid())
        _engines.clear()
        _checked.clear()
        _inherited.clear()
        _inherited_checked.clear()


#: In a forked child: the parent's pooled driver connections, kept alive and
#: never used.  Dropping them would run the driver's deallocator, and
#: mysqlclient's sends COM_QUIT on the socket the parent still uses (its next
#: query fails with "Lost connection to server during query"); psycopg and
#: sqlite3 only close their side, but are kept the same way.
_parents_connections: list[Any] = []


def _keep_pooled_connections(engine: Engine) -> None:
    queue = getattr(getattr(engine.pool, "_pool", None), "queue", ())
    for record in list(queue):
        connection = getattr(record, "dbapi_connection", None)
        if connection is not None:
            _parents_connections.append(connection)


def _after_fork_in_child() -> None:
    with _lock:
        _inherited.clear()
        _inherited_checked.clear()
        for (_pid, url, connect), engine in _engines.items():
            _keep_pooled_connections(engine)
            engine.dispose(close=False)
            _inherited[(url, connect)] = engine
        _inherited_checked.update(url for _pid, url in _checked)
        _engines.clear()
        _checked.clear()


def adopt_parent_engines() -> None:
    """In a forked child: use the parent's engines (their pools were emptied
    at fork, so no connection is shared) and trust its schema checks.  Saves
    a member the first-connect dialect queries and the schema check's own
    connection: what a restarted pool member pays before its first claim."""
    with _lock:
        pid = os.getpid()
        for (url, connect), engine in _inherited.items():
            _engines.setdefault((pid, url, connect), engine)
        _checked.update((pid, url) for url in _inherited_checked)
        _inherited.clear()
        _inherited_checked.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
settings.on_configure(reset_engines)


def get_engine(url: str | URL | None = None, connect: connect_options.Connect | None = None) -> Engine:
    """The engine for ``url`` (default: the configured database URL) and
    ``connect`` (a broker's connection options).  Other SSL options make
    another engine, so an SSL connection never comes from a plain pool; the
    connect timeout is that of the engine's creator (see Connect.identity)."""
    if url is None:
        url = settings.get_settings().database_url
    # Keyed by the whole URL: str(URL) would mask the password, and two
    # URLs that differ only in it would share an engine.
    identity = connect.identity if connect is not None else ()
    key = (os.getpid(), url.render_as_string(hide_password=False) if isinstance(url, URL) else url, identity)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = create_jobtable_engine(url, connect)
                _engines[key] = engine
    return engine


def describe(engine: Engine) -> str:
    """The engine's URL for messages and logs: no password, not even in
    the query (``?password=``)."""
    return urls.render(engine.url)


#: What a lost or refused connection raises: ``DBAPIError`` from a statement,
#: ``DatabaseUnavailable`` from ``connect()`` (no connection could be made,
#: e.g. while the server restarts).  Code that waits out an outage catches both.
ERRORS: tuple[type[Exception], ...] = (DBAPIError, DatabaseUnavailable)

#: Each engine's connect timeout and the setting it came from, and the
#: setting that holds its URL, for errors.
_timeouts: weakref.WeakKeyDictionary[Engine, tuple[float, str]] = weakref.WeakKeyDictionary()
_url_settings: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def unavailable(engine: Engine, exc: BaseException) -> DatabaseUnavailable:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    waited = ""
    timeout = _timeouts.get(engine)
    if timeout is not None and ("timeout" in reason.lower() or "timed out" in reason.lower()):
        seconds = max(float(connect_options.MIN_CONNECT_TIMEOUT), timeout[0])
        waited = f" (no answer within the connect timeout of {seconds:g} s, set by {timeout[1]})"
    return DatabaseUnavailable(
        f"Cannot connect to the jobtable database {describe(engine)}: {scrub(engine, reason)}{waited}. "
        f"Check that the server is running and {_url_settings.get(engine, 'JOBTABLE_DATABASE_URL')} is right "
        f"({URL_EXAMPLES})."
    )


def scrub(engine: Engine, text: str) -> str:
    """``text`` (a driver's message) with the engine's password masked, in
    case the driver quoted its connection string."""
    for secret in (engine.url.password, *(engine.url.query.get(k) for k in urls.SECRET_QUERY_KEYS)):
        if isinstance(secret, str) and secret:
            text = text.replace(secret, urls.MASK)
    return text


def check_schema(engine: Engine, conn: Connection | None = None) -> None:
    """Fail clearly when the schema is missing or older than this code.

    Checked once per process and database.  ``conn``: check through the
    caller's connection (on SQLite a second connection could wait on the
    caller's own write lock).
    """
    key = (os.getpid(), _url_key(engine))
    if key in _checked:
        return
    from .migrate import too_new
    from .revisions import current_revision, head_revision, known_revisions

    if conn is not None:
        current = current_revision(conn)
    else:
        _check_sqlite_file(engine)
        try:
            own = engine.connect().execution_options(sqlite_begin="DEFERRED")
        except DBAPIError as exc:
            raise unavailable(engine, exc) from exc
        with own:
            current = current_revision(own)
    head = head_revision()
    if current is None:
        raise SchemaNotMigrated(
            f"The database {describe(engine)} has no jobtable tables. Run `jobtable migrate` to create them."
        )
    if current not in known_revisions():
        raise too_new(describe(engine), current)
    if current != head:
        raise SchemaNotMigrated(
            f"The jobtable schema of {describe(engine)} is at revision {current}, this version needs {head}. "
            "Run `jobtable migrate` to upgrade it."
        )
    _checked.add(key)


#: Each engine's whole URL, rendered once: check_schema runs on every
#: connect (a single enqueue's), and rendering a URL cost ~5 % of one.
_url_keys: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _url_key(engine: Engine) -> str:
    key = _url_keys.get(engine)
    if key is None:
        key = _url_keys[engine] = engine.url.render_as_string(hide_password=False)
    return key


def _check_sqlite_file(engine: Engine) -> None:
    """A missing SQLite file is an error, not an empty database to create:
    connecting would leave an empty file behind (``jobtable migrate``
    creates it)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.query.get("uri"):
        return
    path = os.path.abspath(url.database)
    if os.path.exists(path):
        return
    from ..settings import setting_source

    unset = ""
    if url.database == "jobtable.sqlite3" and setting_source("database_url").kind == "default":
        unset = (
            " No database is configured (JOBTABLE_DATABASE_URL, jobtable.configure(database_url=...) or "
            "database_url in [tool.jobtable]), so jobtable uses the default sqlite:///jobtable.sqlite3 of the "
            "current directory."
        )
    raise SchemaNotMigrated(
        f"The SQLite database file {path} does not exist.{unset} Create it with `jobtable migrate`, "
        f"or point JOBTABLE_DATABASE_URL at your database ({URL_EXAMPLES})."
    )


def _first_clock_sync() -> None:
    """A process's first ``clock.utcnow()`` before any connection: check out
    one of the default database (the checkout measures the offset)."""
    engine = get_engine()
    if engine.dialect.name in ("postgresql", "mysql"):
        with engine.connect():
            pass


clock.set_first_sync(_first_clock_sync)


def connect(engine: Engine | None = None, *, autocommit: bool = False, check: bool = True) -> Connection:
    """A connection to a migrated jobtable database, with clear errors."""
    engine = engine or get_engine()
    if check:
        check_schema(engine)
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise unavailable(engine, exc) from exc
    if autocommit and engine.dialect.name in ("postgresql", "mysql"):
        # One round trip per single-statement write.  SQLite keeps its
        # BEGIN IMMEDIATE transactions (see _configure_sqlite).
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def ping(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise unavailable(engine, exc) from exc
